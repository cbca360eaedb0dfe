"""The one metrics writer: typed records, resume without duplicates, TensorBoard, remote dump paths."""

from __future__ import annotations

import json
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer import storage
from trainer.run.metrics import MetricsLog, read_document, read_records, write_document


def _tags(folder) -> dict[str, list[int]]:
    """Steps per scalar tag, as TensorBoard reads the folder (purged events dropped)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [scalar.step for scalar in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_records_have_a_kind_and_readers_select_by_it(tmp_path):
    metrics = MetricsLog(str(tmp_path))
    metrics.record("train_step", 1, {"loss": 8.0, "epoch": 0})
    metrics.record("knn", 1, {"top1": 40.0})
    metrics.record("final", 2, {"steps": 2})
    metrics.close()
    assert [r["loss"] for r in read_records(str(tmp_path), "train_step")] == [8.0]
    assert read_records(str(tmp_path), "knn") == [{"kind": "knn", "step": 1, "top1": 40.0}]
    assert [r["kind"] for r in read_records(str(tmp_path))] == ["train_step", "knn", "final"]
    assert sorted(_tags(tmp_path / "tb")) == ["final/steps", "knn/top1", "train_step/loss"]
    with pytest.raises(ValueError, match="unknown record kind"):
        MetricsLog(str(tmp_path / "other")).record("train", 1, {})


def test_a_resumed_run_drops_what_came_after_its_checkpoint(tmp_path):
    metrics = MetricsLog(str(tmp_path))
    for step in range(1, 6):
        metrics.record("train_step", step, {"loss": float(step)})
    metrics.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train_step", "step": 6, "lo')  # torn by a kill
    # TensorBoard reads event files in name order: the second, then a per-process writer counter compared as
    # text ('10' < '9'). A real resume is a new process seconds later; here, start the next second.
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.05)
    resumed = MetricsLog(str(tmp_path), resume_step=3)
    for step in range(4, 7):
        resumed.record("train_step", step, {"loss": step + 0.5})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_records(str(tmp_path), "train_step")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5), (5, 5.5), (6, 6.5)]
    assert sorted(_tags(tmp_path / "tb")["train_step/loss"]) == [1, 2, 3, 4, 5, 6]


def test_a_fresh_start_on_a_reused_folder_starts_a_new_record(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train_step", "step": 9, "loss": 1.0}\n')
    MetricsLog(str(tmp_path)).close()
    assert read_records(str(tmp_path)) == []


def test_other_ranks_write_nothing(tmp_path):
    metrics = MetricsLog(str(tmp_path / "run"), enabled=False)
    metrics.record("train_step", 1, {"loss": 1.0})
    metrics.sync()
    metrics.close()
    assert not (tmp_path / "run").exists()


def test_records_tensorboard_and_the_document_land_on_s3(s3_server, tmp_path):
    dump = s3_server.bucket("metrics-test") + "/run"
    metrics = MetricsLog(dump)
    metrics.record("eval_epoch", 1, {"top1": 50.0, "loss": 1.2})
    metrics.sync()
    assert [r["top1"] for r in read_records(dump, "eval_epoch")] == [50.0]
    metrics.close()
    fs, _ = storage.filesystem(dump)
    fs.get("metrics-test/run/tb", str(tmp_path / "tb"), recursive=True)
    assert _tags(tmp_path / "tb")["eval_epoch/top1"] == [1]
    write_document(dump, {"command": "eval-linear", "top1": 50.0})
    assert read_document(dump)["top1"] == 50.0
    assert json.loads(storage.read_text(dump + "/metrics.json"))["command"] == "eval-linear"
