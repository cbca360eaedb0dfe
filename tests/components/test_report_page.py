"""The report page: every section's numbers, the loss curve as an embedded PNG, written to storage."""

from __future__ import annotations

import base64
import json

from kfp.dsl import HTML

from components.report_page import build_report, render_html


def test_report_holds_every_section_and_the_loss_curve(tmp_path):
    pretrain = tmp_path / "run" / "pretrain"
    pretrain.mkdir(parents=True)
    records = [{"epoch": 0, "iteration": i, "loss": 8.0 - i / 10} for i in range(5)]
    (pretrain / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    artifact = HTML(name="report_html", uri=str(tmp_path / "report_html"))
    url = build_report(str(tmp_path / "run"), str(pretrain),
                       {"Pretraining": {"final_loss": 7.6}, "Linear evaluation": {"top1": 42.5, "top5": 90.0}},
                       artifact)
    assert url == str(tmp_path / "run" / "report" / "report.html")
    page = (tmp_path / "run" / "report" / "report.html").read_text()
    assert page == (tmp_path / "report_html").read_text()
    assert "<h2>Linear evaluation</h2>" in page and "<td>top1</td><td>42.5</td>" in page
    png = (tmp_path / "run" / "report" / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and base64.b64encode(png).decode() in page
    assert artifact.metadata["url"] == url


def test_values_are_escaped():
    page = render_html({"<script>": {"k<": "v>"}}, b"\x89PNG")
    assert "<script>" not in page and "&lt;script&gt;" in page
