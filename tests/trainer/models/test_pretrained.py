"""load_pretrained_trunk: every checkpoint format we accept, and the refusal of mismatched ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer import storage
from trainer.errors import UserError
from trainer.models.pretrained import load_pretrained_trunk
from trainer.models.resnet import build_reference, build_trunk, trunk_state_dict


def _source_trunk(arch: str = "resnet_tiny") -> nn.Module:
    trunk, _ = build_trunk(arch)
    torch.manual_seed(123)
    with torch.no_grad():
        for tensor in trunk.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()
    return trunk


def _assert_same_weights(loaded: nn.Module, source: nn.Module) -> None:
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _save(obj: object, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def _formats(source: nn.Module) -> dict[str, tuple[object, str]]:
    trunk_sd = trunk_state_dict(source)
    head = {"head.projection.weight": torch.randn(8, 512), "head.prototypes.weight": torch.randn(10, 8)}
    ours = {f"trunk.{key}": value for key, value in trunk_sd.items()} | head
    swav = {f"module.{key}": value for key, value in trunk_sd.items()}
    swav["module.projection_head.0.weight"] = torch.randn(8, 512)
    swav["module.prototypes.weight"] = torch.randn(10, 8)
    torchvision_sd = dict(trunk_sd, **{"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)})
    return {
        "checkpoint": ({"epoch": 3, "model": ours, "optimizer": {"state": {}}}, "unmix-swav checkpoint"),
        "checkpoint_ddp": ({"model": {f"module.{k}": v for k, v in ours.items()}},
                           "unmix-swav checkpoint (DDP)"),
        "backbone": (trunk_sd, "trunk state dict (backbone.pth)"),
        "swav_release": (swav, "SwAV release (module.)"),
        "seed_checkpoint": ({"epoch": 5, "state_dict": swav}, "SwAV release (module.) under 'state_dict'"),
        "torchvision": (torchvision_sd, "torchvision state dict"),
    }


@pytest.mark.parametrize("name", [
    "checkpoint", "checkpoint_ddp", "backbone", "swav_release", "seed_checkpoint", "torchvision"])
def test_every_format_loads_all_trunk_tensors(tmp_path: Path, name: str) -> None:
    source = _source_trunk()
    obj, expected_format = _formats(source)[name]
    url = _save(obj, tmp_path / f"{name}.pth")
    target, _ = build_trunk("resnet_tiny")

    report = load_pretrained_trunk(target, url)

    weights = [k for k in target.state_dict() if not k.endswith("num_batches_tracked")]
    assert (report.loaded, report.expected) == (len(weights), len(weights))
    assert report.source_format == expected_format
    assert report.sha256 == hashlib.sha256(Path(url).read_bytes()).hexdigest()
    _assert_same_weights(target, source)


def test_torchvision_model_state_dict_without_step_counters_loads(tmp_path: Path) -> None:
    """Old torchvision releases ship no num_batches_tracked: those are not weights and must not count."""
    reference = build_reference("resnet18")
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    url = _save(state, tmp_path / "resnet18.pth")
    target, _ = build_trunk("resnet18")
    report = load_pretrained_trunk(target, url)
    assert report.loaded == report.expected
    assert torch.equal(target.conv1.weight, reference.conv1.weight)


def test_wrong_architecture_is_refused_and_trunk_untouched(tmp_path: Path) -> None:
    url = _save(trunk_state_dict(_source_trunk("resnet_tiny")), tmp_path / "tiny.pth")
    target, _ = build_trunk("resnet18")  # same stem, twice the blocks: only about half the tensors match
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=r"matches only \d+/\d+ trunk tensors.*--arch"):
        load_pretrained_trunk(target, url)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_shape_mismatch_counts_as_missing(tmp_path: Path) -> None:
    wide = trunk_state_dict(_source_trunk("resnet18"))
    target, _ = build_trunk("resnet50")  # bottleneck blocks: names overlap partly, shapes differ
    url = _save(wide, tmp_path / "r18.pth")
    with pytest.raises(UserError, match="shape mismatches"):
        load_pretrained_trunk(target, url)


def test_unrelated_state_dict_is_refused(tmp_path: Path) -> None:
    url = _save({"encoder.layer.0.weight": torch.zeros(3)}, tmp_path / "bert.pth")
    target, _ = build_trunk("resnet_tiny")
    with pytest.raises(UserError, match="matches only 0/"):
        load_pretrained_trunk(target, url)


def test_non_dict_and_missing_files_are_user_errors(tmp_path: Path) -> None:
    target, _ = build_trunk("resnet_tiny")
    with pytest.raises(UserError, match="not a state dict"):
        load_pretrained_trunk(target, _save([torch.zeros(1)], tmp_path / "list.pth"))
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained_trunk(target, str(tmp_path / "nope.pth"))


def test_loads_from_s3(s3_server, tmp_path: Path) -> None:
    source = _source_trunk()
    bucket = s3_server.bucket("pretrained")
    url = f"{bucket}/run/backbone.pth"
    storage.save_torch(trunk_state_dict(source), url)
    target, _ = build_trunk("resnet_tiny")
    report = load_pretrained_trunk(target, url)
    assert report.loaded == report.expected
    assert report.sha256 == hashlib.sha256(storage.read_bytes(url)).hexdigest()
    _assert_same_weights(target, source)
