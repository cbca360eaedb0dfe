"""DETR's backbone really is our trunk, holding the pretrained file's tensors, with frozen BatchNorm."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from trainer.detr.loss import install_set_loss
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


def test_set_loss_equals_transformers_detr_loss_with_one_host_copy(pretrained_tiny: Path,
                                                                     tiny_args: ArgsFactory) -> None:
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    model, _ = build_detr(tiny_args(pretrained_tiny, dec_layers=3), num_classes=4)
    generator = torch.Generator().manual_seed(3)
    labels = [{"class_labels": torch.tensor([1, 3]),
               "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
              {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    layers, batch, queries = 3, 2, model.config.num_queries
    outputs_class = torch.randn(layers, batch, queries, 5, generator=generator)
    outputs_coord = torch.rand(layers, batch, queries, 4, generator=generator) * 0.5 + 0.25
    args = (outputs_class[-1], labels, torch.device("cpu"), outputs_coord[-1], model.config, outputs_class,
            outputs_coord)
    expected, expected_terms, _ = ForObjectDetectionLoss(*args)
    ours = install_set_loss(model)
    assert model.loss_function is ours and install_set_loss(model) is ours
    loss, terms, auxiliary = ours(*args)
    assert len(auxiliary) == 2 and set(terms) == set(expected_terms)
    for name, value in expected_terms.items():
        torch.testing.assert_close(terms[name], value, msg=name)
    torch.testing.assert_close(loss, expected)
    # DETR's normaliser is the mean box count over ranks: twice as many boxes elsewhere halve the box terms.
    ours.num_boxes = torch.tensor([6.0])
    _, halved, _ = ours(*args)
    torch.testing.assert_close(halved["loss_bbox_0"], expected_terms["loss_bbox_0"] / 2)
    torch.testing.assert_close(halved["loss_ce"], expected_terms["loss_ce"])


def test_transformer_starts_from_detr_initialisation(pretrained_tiny: Path, tiny_args: ArgsFactory) -> None:
    model, _ = build_detr(tiny_args(pretrained_tiny), num_classes=4)
    # transformers draws queries from N(0, 0.02): every query would decode the same box. DETR uses N(0, 1).
    assert model.model.query_position_embeddings.weight.std() > 0.8
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 64, 64), pixel_mask=torch.ones(1, 64, 64, dtype=torch.long))
    assert out.last_hidden_state.std(dim=1).mean() > 1e-3
