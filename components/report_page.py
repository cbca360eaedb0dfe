"""The run report: a self-contained HTML page (metrics tables + the loss curve as an embedded PNG)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from components.runtime import read_train_steps, step_url
from trainer import storage


def loss_curve_png(records: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod or on CI
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    # `step` counts across epochs; older logs only have the within-epoch `iteration`.
    axis.plot([record.get("step", record["iteration"]) for record in records],
              [record["loss"] for record in records], marker=".")
    axis.set_xlabel("step")
    axis.set_ylabel("SwAV + Un-Mix loss")
    axis.set_title("Pretraining loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _table(metrics: dict[str, Any]) -> str:
    rows = []
    for key, value in sorted(metrics.items()):
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        rows.append(f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(shown)}</td></tr>")
    return "<table><tr><th>metric</th><th>value</th></tr>" + "".join(rows) + "</table>"


def render_html(sections: dict[str, dict[str, Any]], png: bytes) -> str:
    image = base64.b64encode(png).decode("ascii")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>unmix-swav run report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}</style></head><body>",
             "<h1>unmix-swav run report</h1>"]
    for title, metrics in sections.items():
        parts.append(f"<h2>{html.escape(title)}</h2>{_table(metrics)}")
    parts.append(f"<h2>Pretraining loss</h2><img alt='pretraining loss curve' src='data:image/png;base64,{image}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_root: str, pretrain_dump_url: str, sections: dict[str, dict[str, Any]],
                 html_artifact: Any) -> str:
    png = loss_curve_png(read_train_steps(pretrain_dump_url))
    page = render_html(sections, png)
    report_url = step_url(run_root, "report/report.html")
    storage.write_text(report_url, page)
    storage.atomic_write_bytes(step_url(run_root, "report/loss_curve.png"), png)
    with open(html_artifact.path, "w", encoding="utf-8") as handle:
        handle.write(page)
    html_artifact.metadata["url"] = report_url
    return report_url
