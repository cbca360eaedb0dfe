"""The pipeline reads a pretraining that ran the kNN monitor: its records say their kind, so the readers of
the pretrain and report steps take the train steps and never trip over kNN lines (they once did)."""

from __future__ import annotations

from components.runtime import read_train_steps
from trainer.cli import main
from trainer.report.build import write_report
from trainer.run.metrics import read_records


def test_a_pretraining_with_the_knn_monitor_feeds_the_pipeline_readers(shapes_dir, tmp_path):
    dump = tmp_path / "run" / "pretrain"
    assert main(["pretrain", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--preset", "demo_cpu",
                 "--arch", "resnet_tiny", "--epochs", "1", "--batch_size", "16", "--workers", "0",
                 "--size_crops", "32", "--log_freq", "2", "--knn_eval_path", str(shapes_dir)]) == 0
    knn = read_records(str(dump), "knn")
    assert len(knn) == 1 and 0 <= knn[0]["top1"] <= 100 and "loss" not in knn[0]
    steps = read_train_steps(str(dump))
    assert [record["step"] for record in steps] == [2, 4] and all(record["loss"] > 0 for record in steps)
    write_report(str(tmp_path / "run"), {"pretrain": str(dump)}, {})
    page = (tmp_path / "run" / "report" / "report.html").read_text()
    assert "kNN monitor" in page and "data:image/png;base64," in page
