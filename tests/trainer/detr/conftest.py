"""Fixtures for the DETR tests: a generated COCO-format set and a pretrained tiny trunk on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.detr.synthetic_coco import make_shapes_coco
from trainer.models.resnet import build_trunk, trunk_state_dict

# A DETR small enough for a few CPU steps a second; every other flag keeps the recipe's default.
TINY_MODEL = {"arch": "resnet_tiny", "hidden_dim": 32, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 64,
              "nheads": 4, "num_queries": 10, "image_size": 64, "batch_size": 4, "workers": 0, "device": "cpu"}


@pytest.fixture
def tiny_values() -> dict[str, object]:
    return dict(TINY_MODEL)


@pytest.fixture
def tiny_flags() -> list[str]:
    return [part for key, value in TINY_MODEL.items() for part in (f"--{key}", str(value))]


@pytest.fixture(scope="session")
def coco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train + 8 val images of 64 px, seed 0."""
    root = tmp_path_factory.mktemp("coco")
    make_shapes_coco(str(root), train_images=24, val_images=8, image_size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def pretrained_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet_tiny backbone.pth whose every tensor (BatchNorm statistics too) is random, not default."""
    trunk, _ = build_trunk("resnet_tiny")
    generator = torch.Generator().manual_seed(7)
    state = trunk_state_dict(trunk)
    for key, value in state.items():
        if value.is_floating_point():
            random = torch.rand(value.shape, generator=generator) + 0.5 if "running_var" in key else (
                torch.randn(value.shape, generator=generator) * 0.1)
            value.copy_(random)
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save(state, path)
    return path
