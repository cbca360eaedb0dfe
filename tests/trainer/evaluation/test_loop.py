"""The evaluation epoch loop resumes a checkpoint written before the run kit's epoch state as if uninterrupted."""

from __future__ import annotations

import logging

import torch

# What the evaluations wrote before the epoch state: `epoch` counted the completed epochs, no `step`, no version.
OLD_KEYS = ("epoch", "history", "model", "optimizer", "scheduler", "confusion", "identity")


def test_a_run_interrupted_before_the_epoch_state_resumes_as_if_uninterrupted(interrupted_linear, caplog) -> None:
    path = interrupted_linear.dump / "checkpoint.pth.tar"
    new = torch.load(path, weights_only=True)
    assert (new["epoch_state"], new["epoch"], new["step"]) == (1, 1, 1)
    for stale in path.parent.glob("checkpoint.pth.tar.*"):  # a digest record of the new bytes, if any
        stale.unlink()
    torch.save({key: new[key] for key in OLD_KEYS}, path)  # the same state in the old layout

    with caplog.at_level(logging.INFO):
        resumed = interrupted_linear.resume()
    assert f"resumed from {path} after epoch 1" in caplog.text
    assert resumed["history"] == interrupted_linear.straight["history"]
    assert resumed["confusion_matrix"] == interrupted_linear.straight["confusion_matrix"]
    assert torch.load(path, weights_only=True)["epoch_state"] == 1  # written back in the one layout
