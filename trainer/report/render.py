"""The report as a page: report.html (self-contained, the figures embedded) and report.md (the summary and the
recipe, linking the page). `Report` is everything they show; build.py assembles it."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from trainer.report.collect import (
    EVALUATIONS,
    NO_BOX,
    SATURATED,
    STEPS,
    Row,
    StepRun,
    duration,
    evaluation_settings,
    format_number,
    wall_time_s,
)
from trainer.report.exported import Export, export_html, export_markdown
from trainer.report.figures import Figure


@dataclass
class Report:
    run_root: str
    steps: dict[str, StepRun]
    baselines: dict[str, StepRun]
    rows: list[Row]
    warnings: list[str]
    recipe: list[tuple[str, str | list[str]]]
    figures: list[Figure]
    created: str
    export: Export | None = None  # <run_root>/export, or what makes it


def _gain(row: Row) -> str:
    return format_number(row.gain, sign="+")


def _published(row: Row) -> str:
    return "—" if row.published is None else f"{row.published.value:.1f}"


def _has_published(report: Report) -> bool:
    return any(row.published for row in report.rows)


def _status_text(row: Row) -> str:
    return row.status + ("" if row.baseline_status in (None, "ok") else f" (random init: {row.baseline_status})")


def _footnotes(report: Report) -> list[str]:
    notes = ["Last-epoch numbers (a higher best epoch is shown beside them). Gain: pretrained minus random init, "
             "in points. Chance: 100 / classes (top-5: 500 / classes). DETR: COCO box AP x 100."]
    if any(row.status == NO_BOX for row in report.rows):
        notes.append(f"{NO_BOX}: neither detector found a box (AP 0), so the detection rows compare nothing; "
                     "DETR needs hundreds of epochs to learn to place boxes.")
    if any(row.status == SATURATED for row in report.rows):
        notes.append(f"{SATURATED}: both trunks score 100 (top-5 of a few classes), so the row cannot tell them "
                     "apart.")
    seeds = {(twin.document or {}).get("pretrained", {}).get("seed") for twin in report.baselines.values()}
    seeds.discard(None)
    if report.baselines:
        notes.append("Random init: the same architecture with seeded random weights"
                     + (f" (seed {', '.join(map(str, sorted(seeds)))})" if seeds else "")
                     + ", evaluated with the same flags.")
    weights = next((run.document.get("pretrained") for run in report.steps.values()
                    if run.key != "pretrain" and run.document and run.document.get("pretrained")), None)
    if weights and weights.get("sha256"):
        notes.append(f"Pretrained: {weights.get('url')} (sha256 {weights['sha256'][:12]}…).")
    if any(row.published for row in report.rows):
        source = next(row.published.source for row in report.rows if row.published)
        notes.append(f"Published: {source} (semi-supervised: SwAV's 800-epoch model); comparable only with a full "
                     "run of the preset on ImageNet.")
    return notes


def _settings_rows(report: Report) -> list[tuple[str, str, str]]:
    return [(run.title, evaluation_settings(run), str(run.args.get("data_path") or run.args.get("coco_path") or ""))
            for key in EVALUATIONS if (run := report.steps.get(key)) and run.document]


def _files_rows(report: Report) -> list[tuple[str, str, str, str]]:
    runs = [run for key in STEPS for run in (report.steps.get(key), report.baselines.get(key)) if run]
    return [(run.title, run.status, duration(wall_time_s(run.url)) if run.document else "—", run.url) for run in runs]


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1180px;color:#222;
padding:0 1em;line-height:1.4}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:4px 10px;border-bottom:1px solid #e4e4e4;text-align:left}
th{background:#f4f6f8}td.num{text-align:right;font-variant-numeric:tabular-nums}td.first{font-weight:600}
.best{color:#888;font-size:85%}.note{color:#555;font-size:88%;margin:.2em 0}
.status{padding:1px 7px;border-radius:9px;font-size:85%;white-space:nowrap}
.s-ok{background:#e3f4e8;color:#1e7b34}.s-below_baseline{background:#fff1d6;color:#8a5a00}
.s-bad{background:#fde2e1;color:#a61b1b}
.warnings{background:#fff8e6;border:1px solid #f0c36d;border-radius:6px;padding:.6em 1.2em}
.warnings li{margin:.2em 0}.allgood{background:#eef8f0;border:1px solid #9fd5ad;border-radius:6px;padding:.6em 1.2em}
dl.recipe{display:grid;grid-template-columns:max-content auto;gap:3px 16px}dl.recipe dt{font-weight:600}
dl.recipe dd{margin:0}figure{margin:1em 0}figcaption{color:#555;font-size:90%}img{max-width:100%}
code{font-size:90%}code.flag{white-space:nowrap;background:#f4f6f8;padding:0 4px;border-radius:3px;
margin-right:4px;line-height:1.8}
"""


def _chip(status: str) -> str:
    if status in (NO_BOX, SATURATED):  # no comparison: the amber chip, not a failure's red
        return f"<span class='status s-below_baseline'>{html.escape(status)}</span>"
    kind = status if status in ("ok", "below_baseline") else "bad"
    return f"<span class='status s-{kind}'>{html.escape(status)}</span>"


def _recipe_html(text: str | list[str]) -> str:
    if isinstance(text, str):
        return html.escape(text)
    return " ".join(f"<code class='flag'>{html.escape(item)}</code>" for item in text)


def _recipe_text(text: str | list[str]) -> str:
    return text if isinstance(text, str) else ", ".join(f"`{item}`" for item in text)


def render_html(report: Report) -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>unmix-swav run report: {e(report.run_root)}</title><style>{CSS}</style></head><body>",
             "<h1>unmix-swav run report</h1>",
             f"<p class='sub'>{e(report.run_root)} · written {e(report.created)}</p>"]
    if report.warnings:
        parts.append("<div class='warnings' id='warnings'><strong>Warnings</strong><ul>"
                     + "".join(f"<li>{e(text)}</li>" for text in report.warnings) + "</ul></div>")
    else:
        parts.append("<div class='allgood' id='warnings'>Every step finished ok, above its random-init "
                     "baseline where one ran.</div>")
    parts.append("<h2>Summary</h2>")
    if report.rows:
        shown = _has_published(report)
        parts.append("<table id='summary'><tr><th>Evaluation</th><th>Metric</th><th>Pretrained</th>"
                     "<th>Random init</th><th>Gain</th><th>Chance</th>" + ("<th>Published</th>" if shown else "")
                     + "<th>Status</th></tr>")
        previous = None
        for row in report.rows:
            first = row.title != previous
            previous = row.title
            best = f" <span class='best'>({e(row.best)})</span>" if row.best else ""
            parts.append(
                f"<tr class='result' data-step='{e(row.headline.step)}' data-metric='{e(row.headline.metric)}'>"
                f"<td class='first'>{e(row.title) if first else ''}</td><td>{e(row.headline.metric)}</td>"
                f"<td class='num'>{format_number(row.pretrained)}{best}</td>"
                f"<td class='num'>{format_number(row.random)}</td>"
                f"<td class='num'>{_gain(row)}</td><td class='num'>{format_number(row.chance)}</td>"
                + (f"<td class='num'>{_published(row)}</td>" if shown else "") + f"<td>{_chip(row.status)}"
                + (f" <span class='best'>random init: {e(row.baseline_status)}</span>"
                   if row.baseline_status not in (None, "ok") else "") + "</td></tr>")
        parts.append("</table>" + "".join(f"<p class='note'>{e(note)}</p>" for note in _footnotes(report)))
    else:
        parts.append("<p>No evaluation finished.</p>")
    settings = _settings_rows(report)
    if settings:
        parts.append("<h3>How each evaluation ran</h3><table id='settings'><tr><th>Evaluation</th><th>Settings</th>"
                     "<th>Data</th></tr>" + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td><code>{e(c)}</code></td>"
                                                    f"</tr>" for a, b, c in settings) + "</table>")
    if report.recipe:
        parts.append("<h2>Pretraining recipe</h2><dl class='recipe' id='recipe'>"
                     + "".join(f"<dt>{e(label)}</dt><dd>{_recipe_html(text)}</dd>" for label, text in report.recipe)
                     + "</dl>")
    if report.figures:
        parts.append("<h2>Curves</h2>")
    for figure in report.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f"<figure><img alt='{e(figure.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption><strong>{e(figure.title)}.</strong> {e(figure.caption)}</figcaption></figure>")
    if report.export is not None:
        parts.append(export_html(report.export))
    parts.append("<h2>Steps and files</h2><table id='files'><tr><th>Step</th><th>Status</th><th>Wall time</th>"
                 "<th>Location</th></tr>" + "".join(f"<tr><td>{e(a)}</td><td>{_chip(b)}</td><td>{e(c)}</td>"
                                                    f"<td><code>{e(d)}</code></td></tr>"
                                                    for a, b, c, d in _files_rows(report)) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(report: Report, html_url: str) -> str:
    lines = ["# unmix-swav run report", "", f"{report.run_root} · written {report.created}", ""]
    if report.warnings:
        lines += ["**Warnings**", "", *[f"- {_md(text)}" for text in report.warnings], ""]
    if report.rows:
        shown = _has_published(report)
        lines += ["| Evaluation | Metric | Pretrained | Random init | Gain | Chance |"
                  + (" Published |" if shown else "") + " Status |",
                  "|---|---|---:|---:|---:|---:|" + ("---:|" if shown else "") + "---|"]
        lines += [f"| {_md(row.title)} | {row.headline.metric} | {format_number(row.pretrained)} | "
                  f"{format_number(row.random)} | {_gain(row)} | {format_number(row.chance)} |"
                  + (f" {_published(row)} |" if shown else "") + f" {_md(_status_text(row))} |"
                  for row in report.rows]
        lines += ["", *[_md(note) for note in _footnotes(report)], ""]
    if report.recipe:
        lines += ["## Pretraining recipe", "",
                  *[f"- **{_md(label)}**: {_md(_recipe_text(text))}" for label, text in report.recipe], ""]
    if report.export is not None:
        lines += export_markdown(report.export)
    lines += [f"Curves and files: {html_url}", ""]
    return "\n".join(lines)
