"""torch.hub entry points for an `unmix-swav export` folder (docs/export.md).

    model = torch.hub.load("owner/repo" or a checkout, "unmix_swav", export="<folder or https URL>"[, source="local"])
    transform = torch.hub.load(..., "unmix_swav_transform", export=...)

Imports only torch, torchvision and safetensors (not the trainer package), so loading needs nothing else.
Every weight file is checked against the sha256 config.json records before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torchvision import transforms
from torchvision.models import resnet

dependencies = ["torch", "torchvision", "safetensors"]

CONFIG_FILE, TRUNK_FILE, CLASSIFIER_FILE = "config.json", "trunk.safetensors", "classifier.safetensors"


def _is_remote(export: str) -> bool:
    if "://" not in export:
        return False
    if not export.startswith(("http://", "https://")):
        raise ValueError(f"export={export!r}: torch.hub loads a local folder or an http(s) URL; copy the export "
                         "to a folder first")
    return True


def _fetch(export: str, name: str, refresh: bool = False) -> str:
    """A local path of file `name` of the export: in the folder, or downloaded into torch.hub's cache (the
    small config.json every time, a weight file once unless `refresh`)."""
    if not _is_remote(export):
        return os.path.join(export, name)
    folder = os.path.join(torch.hub.get_dir(), "unmix_swav", hashlib.sha256(export.encode()).hexdigest()[:16])
    path = os.path.join(folder, name)
    if refresh or name == CONFIG_FILE or not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        torch.hub.download_url_to_file(export.rstrip("/") + "/" + name, path, progress=False)
    return path


def _sha256(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def read_config(export: str) -> dict[str, Any]:
    with open(_fetch(export, CONFIG_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def _weights(export: str, name: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of weight file `name`, after checking its sha256 against config.json (a cached download of an
    earlier export at the same URL is fetched again once)."""
    expected = config["files"][name]["sha256"]
    path = _fetch(export, name)
    digest = _sha256(path)
    if digest != expected and _is_remote(export):
        path = _fetch(export, name, refresh=True)
        digest = _sha256(path)
    if digest != expected:
        raise ValueError(f"{path} has sha256 {digest}, not the {expected} config.json records: the file is "
                         "corrupt or from another export; export or download it again")
    return safetensors.torch.load_file(path)


def build_model(config: dict[str, Any], num_classes: int = 1000) -> resnet.ResNet:
    """The torchvision ResNet config.json describes (every unmix-swav arch, resnet_tiny included)."""
    arch = config["architecture"]
    block = {"BasicBlock": resnet.BasicBlock, "Bottleneck": resnet.Bottleneck}[arch["block"]]
    return resnet.ResNet(block, arch["layers"], num_classes=num_classes, groups=arch["groups"],
                         width_per_group=arch["width_per_group"])


def unmix_swav(export: str, classifier: bool = True) -> nn.Module:
    """The exported classifier (torchvision ResNet, `fc` = the linear head) when the export has one and
    `classifier` is true, else the trunk with `fc` = Identity (pooled features); in eval mode."""
    config = read_config(export)
    if classifier and CLASSIFIER_FILE in config["files"]:
        model = build_model(config, config["num_classes"])
        model.load_state_dict(_weights(export, CLASSIFIER_FILE, config))
        model.classes = config["classes"]  # label order: model(x).argmax(1) indexes this list
    else:
        model = build_model(config)
        model.fc = nn.Identity()
        model.load_state_dict(_weights(export, TRUNK_FILE, config))
    return model.eval()


def unmix_swav_transform(export: str) -> transforms.Compose:
    """The validation preprocessing the export was scored with (PIL image -> normalised tensor)."""
    pre = read_config(export)["preprocessing"]
    return transforms.Compose([
        transforms.Resize(pre["resize"], interpolation=transforms.InterpolationMode(pre["interpolation"]),
                          antialias=pre["antialias"]),
        transforms.CenterCrop(pre["crop"]),
        transforms.ToTensor(),
        transforms.Normalize(pre["mean"], pre["std"]),
    ])
