"""What an export holds besides the trunk: the architecture as torchvision's ResNet arguments, the linear head
folded into `fc`, and the validation preprocessing of eval-linear, read from the code that ran it."""

from __future__ import annotations

import hashlib
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torchvision import models, transforms

from trainer.evaluation.features import eval_transform
from trainer.evaluation.linear import LinearClassifier
from trainer.models.resnet import ARCHS, check_arch


def architecture(arch: str) -> dict[str, Any]:
    """How to build `arch` from torchvision's ResNet class: every trunk the trainer offers is one (resnet_tiny
    included), so `ResNet(block, layers, groups=, width_per_group=, num_classes=)` rebuilds it exactly."""
    check_arch(arch)
    with torch.device("meta"):  # shapes only: no memory, no random init
        model = ARCHS[arch]()
    return {"class": "torchvision.models.resnet.ResNet",
            "torchvision_builder": f"torchvision.models.{arch}" if arch in models.list_models() else None,
            "block": type(model.layer1[0]).__name__,
            "layers": [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)],
            "groups": model.groups, "width_per_group": model.base_width,
            "feature_dim": model.fc.in_features}


def preprocessing(image_size: int) -> dict[str, Any]:
    """The validation transform eval-linear uses at `image_size` (trainer.evaluation.features.eval_transform),
    read from the transform object itself so that the export cannot drift from the evaluation."""
    steps = {type(step): step for step in eval_transform(image_size).transforms}
    if list(steps) != [transforms.Resize, transforms.CenterCrop, transforms.ToTensor, transforms.Normalize]:
        raise RuntimeError(f"eval_transform is now {list(steps)}; teach trainer/export/model.py to describe it")
    resize, crop, normalize = steps[transforms.Resize], steps[transforms.CenterCrop], steps[transforms.Normalize]
    if not isinstance(resize.size, int):
        raise RuntimeError(f"eval_transform resizes to {resize.size}, not a shorter side")
    crop_height, crop_width = crop.size
    if crop_height != crop_width:
        raise RuntimeError(f"eval_transform crops {crop.size}, not a square")
    return {"resize": resize.size, "crop": crop_height, "interpolation": resize.interpolation.value,
            "antialias": bool(resize.antialias), "mean": [float(v) for v in normalize.mean],
            "std": [float(v) for v in normalize.std], "input": "RGB, scaled to [0, 1] (ToTensor) before mean/std"}


def fold_head(head: LinearClassifier) -> dict[str, torch.Tensor]:
    """`fc.weight` / `fc.bias` computing what (BatchNorm in eval mode) + Linear computes on pooled features.

    BN(x) = (x - mean) * s + beta with s = gamma / sqrt(var + eps), so W BN(x) + b = (W s) x + (b + W (beta -
    mean s)); folded in float64 so the folded layer matches the pair to float32 rounding."""
    weight, bias = head.linear.weight.detach().double(), head.linear.bias.detach().double()
    if isinstance(head.bn, nn.BatchNorm1d):
        bn = head.bn
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.detach().double() - bn.running_mean.double() * scale
        bias = bias + weight @ shift
        weight = weight * scale
    return {"fc.weight": weight.float().contiguous(), "fc.bias": bias.float().contiguous()}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, str]:
    """The safetensors file of `tensors` (contiguous CPU copies) and its sha256."""
    data = safetensors.torch.save({key: value.detach().cpu().contiguous() for key, value in tensors.items()},
                                  metadata={"format": "pt", **metadata})
    return data, hashlib.sha256(data).hexdigest()
