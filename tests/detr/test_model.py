"""DETR's backbone really is our trunk, holding the pretrained file's tensors, with frozen BatchNorm."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from trainer.detr.loss import set_loss
from trainer.detr.model import TrunkFeatures, backbone_trunk, build_detr
from trainer.detr.train import detr_args

ArgsFactory = Callable[..., argparse.Namespace]


@pytest.fixture
def tiny_args(tiny_values: dict[str, object]) -> ArgsFactory:
    def make(pretrained: Path | str, **overrides: object) -> argparse.Namespace:
        return detr_args(coco_path="unused", pretrained=str(pretrained), dump_path="unused",
                         **{**tiny_values, **overrides})

    return make


def test_backbone_holds_the_pretrained_tensors(pretrained_tiny: Path, tiny_args: ArgsFactory) -> None:
    model, report = build_detr(tiny_args(pretrained_tiny), num_classes=4)
    assert isinstance(model.model.backbone.model, TrunkFeatures)
    assert report is not None and report.loaded == report.expected == 60
    source = torch.load(pretrained_tiny, weights_only=True)
    backbone = backbone_trunk(model).state_dict()
    compared = 0
    for key, value in source.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(backbone[key], value), key
        compared += 1
    assert compared == 60
    # The trunk's tensors are the only backbone the model holds: no leftover transformers ResNet.
    detr_keys = [key for key in model.state_dict() if key.startswith("model.backbone.")]
    assert all(key.startswith("model.backbone.model.trunk.") for key in detr_keys)


def test_batchnorm_frozen_and_stem_not_trained(pretrained_tiny: Path, tiny_args: ArgsFactory) -> None:
    model, _ = build_detr(tiny_args(pretrained_tiny), num_classes=4)
    trunk = backbone_trunk(model)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert sum(isinstance(module, FrozenBatchNorm2d) for module in trunk.modules()) == 12
    trainable = {name for name, p in trunk.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("layer2.", "layer3.", "layer4.")) for name in trainable)
    assert not any(p.requires_grad for name, p in trunk.named_parameters() if name.startswith(("conv1", "layer1")))
    before = {key: value.clone() for key, value in trunk.state_dict().items()}
    model.train()
    out = model(pixel_values=torch.randn(2, 3, 64, 64), pixel_mask=torch.ones(2, 64, 64, dtype=torch.long))
    assert out.logits.shape == (2, 10, 5) and out.pred_boxes.shape == (2, 10, 4)
    assert all(torch.equal(before[key], value) for key, value in trunk.state_dict().items())


def test_lr_backbone_zero_freezes_the_whole_trunk(pretrained_tiny: Path, tiny_args: ArgsFactory) -> None:
    model, _ = build_detr(tiny_args(pretrained_tiny, lr_backbone=0.0), num_classes=4)
    assert not any(p.requires_grad for p in backbone_trunk(model).parameters())
    assert any(p.requires_grad for p in model.parameters())


def test_random_backbone_when_asked(pretrained_tiny: Path, tiny_args: ArgsFactory) -> None:
    model, report = build_detr(tiny_args("none"), num_classes=4)
    assert report is None
    source = torch.load(pretrained_tiny, weights_only=True)
    assert not torch.equal(backbone_trunk(model).state_dict()["conv1.weight"], source["conv1.weight"])


def test_set_loss_weights_and_normalises_boxes(pretrained_tiny: Path, tiny_args: ArgsFactory) -> None:
    model, _ = build_detr(tiny_args(pretrained_tiny), num_classes=4)
    terms = {"loss_ce": torch.tensor(1.0), "loss_bbox": torch.tensor(1.0), "loss_giou": torch.tensor(1.0),
             "cardinality_error": torch.tensor(9.0), "loss_bbox_0": torch.tensor(2.0)}
    # DETR's weights: ce 1, bbox 5, giou 2, the same for auxiliary layers; cardinality is logged only.
    assert set_loss(terms, model.config, local_boxes=4, mean_boxes=4.0).item() == pytest.approx(1 + 5 + 2 + 10)
    # This rank holds 2 boxes, the ranks' mean is 4: box terms were divided by 2 and must be by 4.
    assert set_loss(terms, model.config, local_boxes=2, mean_boxes=4.0).item() == pytest.approx(1 + 8.5)


def test_transformer_starts_from_detr_initialisation(pretrained_tiny: Path, tiny_args: ArgsFactory) -> None:
    model, _ = build_detr(tiny_args(pretrained_tiny), num_classes=4)
    # transformers draws queries from N(0, 0.02): every query would decode the same box. DETR uses N(0, 1).
    assert model.model.query_position_embeddings.weight.std() > 0.8
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 64, 64), pixel_mask=torch.ones(1, 64, 64, dtype=torch.long))
    assert out.last_hidden_state.std(dim=1).mean() > 1e-3
