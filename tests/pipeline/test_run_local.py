"""End to end at tiny size: the SAME pipeline function on kfp's local SubprocessRunner, every step
for real (stage, pretraining replicas under torchrun with the operator's env, four evaluations,
report), storage a local folder. Takes about 2-3 minutes on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.local_run import run_local


def test_tiny_pipeline_runs_end_to_end_and_reports_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    where = run_local("tiny", tmp_path / "out")

    report_url = Path(where["report_url"])
    assert report_url.is_file() and report_url.is_relative_to(tmp_path / "out" / "storage")
    page = Path(where["report_html"]).read_text()
    assert page == report_url.read_text()
    for section in ("Pretraining", "Linear evaluation", "Semi-supervised, 1% labels",
                    "Semi-supervised, 10% labels", "DETR transfer"):
        assert f"<h2>{section}</h2>" in page
    assert "final_loss" in page and "<td>top1</td>" in page
    assert "src='data:image/png;base64,iVBOR" in page  # the loss curve, embedded as a PNG
    run_root = report_url.parent.parent
    assert (run_root / "pretrain" / "backbone.pth").is_file()
    for step in ("eval-linear", "eval-semisup-1pct", "eval-semisup-10pct"):
        metrics = json.loads((run_root / step / "metrics.json").read_text())
        assert 0.0 <= metrics["top1"] <= 100.0 and metrics["top1"] <= metrics["top5"]
    detr = json.loads((run_root / "detr" / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75"} <= set(detr["box_ap"])
    assert "box_ap.AP50" in page  # the AP numbers reached kfp Metrics and the report
