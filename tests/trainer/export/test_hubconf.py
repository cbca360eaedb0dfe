"""hubconf.py: torch.hub.load(checkout, "unmix_swav", export=folder, source="local") offline."""

from __future__ import annotations

import ast
import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.cli import main
from trainer.models.resnet import build_trunk, trunk_state_dict

REPO = Path(__file__).resolve().parents[3]


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


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on loopback (a thread of this process) and its URL."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_hub_loads_an_export_over_http_and_refetches_a_replaced_one(run_dir, tmp_path, http_root, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    root, url = http_root
    export(run_dir, root / "export", linear=True)
    assert torch.hub.load(str(REPO), "unmix_swav", export=f"{url}/export", source="local").fc.out_features == 4
    first = torch.hub.load(str(REPO), "unmix_swav", export=f"{url}/export", classifier=False, source="local")
    # Another trunk exported to the same URL: the cached trunk.safetensors no longer matches config.json.
    torch.manual_seed(7)
    other, _ = build_trunk("resnet_tiny")
    torch.save(trunk_state_dict(other), tmp_path / "other.pth")
    (root / "export" / "classifier.safetensors").unlink()
    assert main(["export", "--pretrained", str(tmp_path / "other.pth"), "--arch", "resnet_tiny",
                 "--dest", str(root / "export")]) == 0
    second = torch.hub.load(str(REPO), "unmix_swav", export=f"{url}/export", source="local")
    assert isinstance(second.fc, torch.nn.Identity)
    assert torch.equal(second.conv1.weight, other.conv1.weight)
    assert not torch.equal(second.conv1.weight, first.conv1.weight)


def test_hubconf_imports_only_torch_torchvision_and_safetensors():
    tree = ast.parse((REPO / "hubconf.py").read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert roots - {"__future__", "hashlib", "json", "os", "typing"} == {"torch", "torchvision", "safetensors"}
