"""Component run-time helpers with real kfp artifact objects and real files."""

from __future__ import annotations

import json

from kfp.dsl import Dataset, Metrics

from components.runtime import json_ints, log_metrics, numeric_items, read_train_steps, record_url, step_url


def test_numeric_items_flattens_results_and_leaves_settings_out():
    metrics = {"top1": 71.5, "top5": 90, "box_ap": {"AP": 0.25, "APs": -1.0}, "args": {"lr": 0.3},
               "command": "eval-linear", "converged": True}
    assert numeric_items(metrics) == {"top1": 71.5, "top5": 90.0, "box_ap.AP": 0.25, "box_ap.APs": -1.0}


def test_log_metrics_fills_a_kfp_metrics_artifact_and_records_the_source():
    artifact = Metrics(name="metrics", uri="/tmp/unused")
    log_metrics(artifact, {"top1": 50.0, "best": {"top5": 80.0}}, "s3://b/run/eval-linear")
    assert artifact.metadata == {"top1": 50.0, "best.top5": 80.0, "url": "s3://b/run/eval-linear"}


def test_record_url_writes_a_pointer_file_for_artifacts_that_live_in_object_storage(tmp_path):
    artifact = Dataset(name="images", uri=str(tmp_path / "images"))
    record_url(artifact, "s3://b/run/data/images", source="builtin:shapes")
    assert json.loads((tmp_path / "images").read_text()) == {"url": "s3://b/run/data/images",
                                                             "source": "builtin:shapes"}
    assert artifact.metadata["url"] == "s3://b/run/data/images"


def test_json_ints_undoes_protobuf_floats_only_for_whole_numbers():
    assert json_ints({"train_images": 6.0, "scale": 0.5, "name": "x"}) == {"train_images": 6, "scale": 0.5,
                                                                             "name": "x"}


def test_train_steps_are_read_in_order_without_the_knn_monitor_records(tmp_path):
    """The pipeline's readers once broke on kNN lines without `loss`: records now say their kind."""
    (tmp_path / "metrics.jsonl").write_text(
        '{"kind": "train_step", "step": 1, "loss": 8.0}\n\n{"kind": "knn", "step": 1, "top1": 40.0}\n'
        '{"kind": "train_step", "step": 2, "loss": 7.5}\n{"knn_top1": 41.0, "step": 2}\n'
        '{"iteration": 3, "loss": 7.0}\n')
    assert [r["loss"] for r in read_train_steps(str(tmp_path))] == [8.0, 7.5, 7.0]
    assert step_url("s3://b/runs/", "abc") == "s3://b/runs/abc"
