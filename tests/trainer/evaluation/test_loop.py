"""The evaluation epoch loop resumes a checkpoint written before the run kit's epoch state as if uninterrupted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from trainer.evaluation import linear, loop

# What the evaluations wrote before the epoch state: `epoch` counted the completed epochs, no `step`, no version.
OLD_KEYS = ("epoch", "history", "model", "optimizer", "scheduler", "confusion", "identity")


def test_a_run_interrupted_before_the_epoch_state_resumes_as_if_uninterrupted(
        parse, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    def args(dump: Path):
        return parse("eval-linear", "--data_path", str(shapes_dir), "--epochs", "3", "--batch_size", "16",
                     "--scheduler_type", "step", "--decay_epochs", "1", "2", "--dump_path", str(dump))

    straight = linear.run_linear(args(tmp_path / "straight"))

    real_validate, calls = loop.validate, []

    def validate_then_crash(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # dies during epoch 2, after epoch 1's checkpoint
            raise KeyboardInterrupt
        return real_validate(*a, **k)

    monkeypatch.setattr(loop, "validate", validate_then_crash)
    with pytest.raises(KeyboardInterrupt):
        linear.run_linear(args(tmp_path / "resumed"))
    monkeypatch.setattr(loop, "validate", real_validate)
    path = tmp_path / "resumed" / "checkpoint.pth.tar"
    new = torch.load(path, weights_only=True)
    assert (new["epoch_state"], new["epoch"], new["step"]) == (1, 1, 1)
    for stale in path.parent.glob("checkpoint.pth.tar.*"):  # a digest record of the new bytes, if any
        stale.unlink()
    torch.save({key: new[key] for key in OLD_KEYS}, path)  # the same state in the old layout

    with caplog.at_level(logging.INFO):
        resumed = linear.run_linear(args(tmp_path / "resumed"))
    assert f"resumed from {path} after epoch 1" in caplog.text
    assert resumed["history"] == straight["history"]
    assert resumed["confusion_matrix"] == straight["confusion_matrix"]
    assert torch.load(path, weights_only=True)["epoch_state"] == 1  # written back in the one layout
