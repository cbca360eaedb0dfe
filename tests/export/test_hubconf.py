"""hubconf.py: torch.hub.load(checkout, "unmix_swav", export=folder, source="local") offline."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]


def export(run_dir: Path, dest: Path, linear: bool) -> Path:
    argv = ["export", "--pretrained", str(run_dir / "pretrain" / "backbone.pth"), "--arch", "resnet_tiny",
            "--dest", str(dest)]
    assert main(argv + (["--linear", str(run_dir / "eval-linear")] if linear else [])) == 0
    return dest


def test_hub_loads_the_classifier_and_its_preprocessing(run_dir, shapes_dir, tmp_path):
    folder = export(run_dir, tmp_path / "export", linear=True)
    model = torch.hub.load(str(REPO), "unmix_swav", export=str(folder), source="local")
    transform = torch.hub.load(str(REPO), "unmix_swav_transform", export=str(folder), source="local")
    classes = json.loads((folder / "config.json").read_text())["classes"]
    assert model.classes == classes and not model.training
    images = sorted((shapes_dir / "val" / classes[0]).iterdir())[:4]
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in images])
    with torch.no_grad():
        assert model(batch).shape == (4, len(classes))


def test_hub_loads_the_trunk_with_fc_identity_and_checks_digests(run_dir, tmp_path):
    folder = export(run_dir, tmp_path / "export", linear=False)
    trunk = torch.hub.load(str(REPO), "unmix_swav", export=str(folder), source="local")
    assert isinstance(trunk.fc, torch.nn.Identity)
    with torch.no_grad():
        assert trunk(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    data = bytearray((folder / "trunk.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "trunk.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        torch.hub.load(str(REPO), "unmix_swav", export=str(folder), source="local")


def test_hubconf_imports_only_torch_torchvision_and_safetensors():
    tree = ast.parse((REPO / "hubconf.py").read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert roots - {"__future__", "hashlib", "json", "os", "typing"} == {"torch", "torchvision", "safetensors"}
