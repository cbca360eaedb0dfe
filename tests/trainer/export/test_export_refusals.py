"""unmix-swav export refuses bad input with one line and exit 2, and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from trainer import storage
from trainer.cli import main
from trainer.models.resnet import build_trunk, trunk_state_dict


def refused(capfd: pytest.CaptureFixture, dest: Path, *argv: str) -> str:
    """The error line of an export that must be refused; checks exit 2, one line, no traceback, no --dest."""
    capfd.readouterr()
    assert main(["export", "--dest", str(dest), *argv]) == 2
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # beside INFO log lines
    assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
    assert not dest.exists()
    return errors[0]


def copy_dump(run_dir: Path, tmp_path: Path) -> Path:
    dump = tmp_path / "eval-linear"
    shutil.copytree(run_dir / "eval-linear", dump)
    return dump


def test_a_backbone_of_another_arch(run_dir, tmp_path, capfd):
    backbone = str(run_dir / "pretrain" / "backbone.pth")
    line = refused(capfd, tmp_path / "out", "--pretrained", backbone, "--arch", "resnet18")
    assert "--arch" in line
    torch.manual_seed(0)
    deeper, _ = build_trunk("resnet34")  # every resnet18 tensor has a resnet34 twin: only the leftovers tell
    torch.save(trunk_state_dict(deeper), tmp_path / "resnet34.pth")
    line = refused(capfd, tmp_path / "out", "--pretrained", str(tmp_path / "resnet34.pth"), "--arch", "resnet18")
    assert "96 trunk tensors" in line and "--arch" in line


def test_a_head_scored_on_another_trunk(run_dir, tmp_path, capfd):
    torch.manual_seed(1)
    other, _ = build_trunk("resnet_tiny")
    torch.save(trunk_state_dict(other), tmp_path / "other.pth")
    line = refused(capfd, tmp_path / "out", "--pretrained", str(tmp_path / "other.pth"), "--arch", "resnet_tiny",
                   "--linear", str(run_dir / "eval-linear"))
    assert "another trunk" in line
    line = refused(capfd, tmp_path / "out", "--pretrained", str(run_dir / "pretrain" / "backbone.pth"),
                   "--arch", "resnet_tiny", "--linear", str(run_dir / "eval-linear-random"))
    assert "randomly initialised" in line


def test_a_dump_without_a_head(run_dir, tmp_path, capfd):
    dump = copy_dump(run_dir, tmp_path)
    checkpoint = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    storage.save_torch({key: value for key, value in checkpoint.items() if key != "model"},
                       str(dump / "checkpoint.pth.tar"))  # with its digest record, as a run writes it
    line = refused(capfd, tmp_path / "out", "--pretrained", str(run_dir / "pretrain" / "backbone.pth"),
                   "--arch", "resnet_tiny", "--linear", str(dump))
    assert "no linear head" in line
    line = refused(capfd, tmp_path / "out", "--pretrained", str(run_dir / "pretrain" / "backbone.pth"),
                   "--arch", "resnet_tiny", "--linear", str(run_dir / "pretrain"))
    assert "not eval-linear" in line


def test_a_head_on_unpooled_features(run_dir, tmp_path, capfd):
    # A stand-in for a --global_pooling false run (it needs >= 192 px images, too slow here): the dump's
    # recorded flag is what the export reads.
    dump = copy_dump(run_dir, tmp_path)
    metrics = json.loads((dump / "metrics.json").read_text())
    metrics["args"]["global_pooling"] = False
    storage.write_verified(str(dump / "metrics.json"), json.dumps(metrics))
    line = refused(capfd, tmp_path / "out", "--pretrained", str(run_dir / "pretrain" / "backbone.pth"),
                   "--arch", "resnet_tiny", "--linear", str(dump))
    assert "--global_pooling" in line


def test_no_weights_or_a_folder_of_other_files(run_dir, tmp_path, capfd):
    refused(capfd, tmp_path / "out", "--pretrained", "random", "--arch", "resnet_tiny")
    refused(capfd, tmp_path / "out", "--pretrained", str(tmp_path / "missing.pth"), "--arch", "resnet_tiny")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    capfd.readouterr()
    assert main(["export", "--dest", str(busy), "--pretrained", str(run_dir / "pretrain" / "backbone.pth"),
                 "--arch", "resnet_tiny"]) == 2
    assert "other files" in capfd.readouterr().err and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_a_dump_from_before_trunk_digests_is_matched_by_the_file(run_dir, tmp_path, capfd):
    dump = copy_dump(run_dir, tmp_path)
    metrics = json.loads((dump / "metrics.json").read_text())
    del metrics["pretrained"]["trunk_sha256"]
    storage.write_verified(str(dump / "metrics.json"), json.dumps(metrics))
    line = refused(capfd, tmp_path / "out", "--pretrained", str(run_dir / "pretrain" / "checkpoint.pth.tar"),
                   "--arch", "resnet_tiny", "--linear", str(dump))
    assert "another trunk" in line  # the same tensors in another file: without the digest it cannot tell
    assert main(["export", "--dest", str(tmp_path / "out"), "--pretrained", str(run_dir / "pretrain" / "backbone.pth"),
                 "--arch", "resnet_tiny", "--linear", str(dump / "checkpoint.pth.tar")]) == 0
    assert (tmp_path / "out" / "classifier.safetensors").exists()
