"""ResNet trunks: every torchvision ResNet plus a small one for CPU tests and demos.

The trunk is the torchvision model with `fc` replaced by Identity, so its state dict keeps torchvision's
own key names and `torchvision.models.<arch>().load_state_dict(sd, strict=False)` misses only `fc.*`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, ResNet

from trainer.errors import UserError


def resnet_tiny(**kwargs) -> ResNet:
    """A one-block-per-stage BasicBlock ResNet (4.9 M parameters): CPU-friendly, torchvision key names."""
    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)


ARCHS: dict[str, Callable[..., ResNet]] = {
    "resnet_tiny": resnet_tiny,
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
    "resnet152": models.resnet152,
    "wide_resnet50_2": models.wide_resnet50_2,
}


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r} is not known; choose one of: {', '.join(ARCHS)}")


def build_trunk(arch: str) -> tuple[ResNet, int]:
    """A randomly initialised trunk (no classifier) and the width of its pooled features."""
    check_arch(arch)
    trunk = ARCHS[arch]()
    feature_dim = trunk.fc.in_features
    trunk.fc = nn.Identity()
    return trunk, feature_dim


def build_reference(arch: str) -> ResNet:
    """The plain torchvision-style model of `arch` (with its classifier), to check exported weights."""
    check_arch(arch)
    return ARCHS[arch]()


def trunk_state_dict(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's weights under torchvision's key names, on the CPU, without `fc`."""
    return {key: value.detach().cpu().clone() for key, value in trunk.state_dict().items()
            if not key.startswith("fc.")}
