"""The loss watch behind every metrics.json status."""

from __future__ import annotations

import math

import pytest

from trainer.run.health import LossWatch, TrainingDiverged


def test_a_noisy_start_is_ok_a_climb_is_flagged_once_and_nan_stops():
    watch = LossWatch("lower --lr")
    for loss in (2.0, 2.5, 5.9, 1.0):
        watch.observe(loss, "epoch")
    assert watch.summary() == {"status": "ok", "status_reason": ""}
    watch.observe(6.5, "epoch 5")
    assert watch.status == "diverged" and "from 2 to 6.5 at epoch 5" in watch.reason and "lower --lr" in watch.reason
    watch.flag("collapsed", "later finding")
    assert watch.status == "diverged"  # the first finding stands
    with pytest.raises(TrainingDiverged, match="became nan at step 9; stopped.*lower --lr"):
        watch.observe(math.nan, "step 9")
    with pytest.raises(ValueError):
        LossWatch("").flag("bad", "")
