"""`unmix-swav detr` resumes a checkpoint.pth written before the run kit's epoch state as if uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.cli import main

FAST = ["--lr", "2e-3", "--lr_backbone", "1e-4", "--dropout", "0"]
TIMINGS = ("train_seconds", "seconds_per_step")  # wall-clock, differs between any two runs


def _history(dump: Path) -> list[dict]:
    rows = json.loads((dump / "metrics.json").read_text())["history"]
    return [{key: value for key, value in row.items() if key not in TIMINGS} for row in rows]


def test_an_old_checkpoint_pth_resumes_as_if_uninterrupted(coco_dir: Path, pretrained_tiny: Path,
                                                           tiny_flags: list[str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def run(dump: Path, epochs: int) -> None:
        assert main(["detr", "--coco_path", str(coco_dir), "--pretrained", str(pretrained_tiny), "--dump_path",
                     str(dump), *tiny_flags, *FAST, "--epochs", str(epochs)]) == 0

    run(tmp_path / "straight", 2)
    dump = tmp_path / "resumed"
    run(dump, 1)
    new = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    assert (new["epoch_state"], new["epoch"], new["step"]) == (1, 1, 6)
    # The same state as DETR wrote it before: checkpoint.pth, `lr_scheduler`, `global_step`, and `epoch` the
    # index of the last finished epoch.
    torch.save({"model": new["model"], "optimizer": new["optimizer"], "lr_scheduler": new["scheduler"],
                "epoch": 0, "global_step": 6, "history": new["history"], "num_classes": new["num_classes"],
                "args": new["args"], "identity": new["identity"]}, dump / "checkpoint.pth")
    for stale in dump.glob("checkpoint*.pth.tar*"):
        stale.unlink()
    capsys.readouterr()

    run(dump, 2)
    assert f"resumed from {dump}/checkpoint.pth after epoch 1" in capsys.readouterr().err
    assert _history(dump) == _history(tmp_path / "straight")
    written = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    assert (written["epoch"], written["step"]) == (2, 12) and "lr_scheduler" not in written
