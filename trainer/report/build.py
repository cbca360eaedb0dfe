"""`unmix-swav report RUN_ROOT [--dest URL]`: a run's report, rebuilt from what its steps left in storage.

A run's steps write under one root, each in the folder its catalogue key names (trainer/steps.py: pretrain,
eval-knn, eval-linear, eval-semisup-1pct, eval-semisup-10pct, detr) and each evaluation's random-init twin in
`<key>-random`: the pipeline lays runs out so, and so do the job manifests under k8s/ for `kubectl apply`. The
command reads the folders there are and writes `report.html` (self-contained: the figures are embedded PNGs,
also written beside it) and `report.md` under `--dest` (default `<RUN_ROOT>/report`):

- warnings first: every step whose status is not ok (diverged, collapsed) with its reason, pretrained numbers
  not above their random-init twin (below_baseline), numbers at chance, skipped files, steps without results;
- one summary table, like a paper's: each evaluation's headline metric for the pretrained trunk and for a
  randomly initialised one, the gain, chance, the published figure of the preset (trainer/reference.py), the
  status;
- the pretraining recipe in one block: preset, the flags that differ from it, scale, throughput, wall time;
- curves: pretraining loss (L_ori, L_mix, L_mix_rev), lr and the kNN monitor; accuracy and loss per epoch
  of each evaluation, pretrained beside random init; DETR loss and AP per epoch;
- the export (`<RUN_ROOT>/export`, found by its config.json): each file linked with its sha256, or the
  `unmix-swav export` command that makes it.

The pipeline's report step (components/report.py) calls `write_report` with the URLs its steps returned and adds
kfp's artifacts.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from trainer import steps as catalogue
from trainer import storage
from trainer.errors import UserError
from trainer.report.collect import (
    EVALUATIONS,
    STATUSES_OK,
    STEPS,
    collect_warnings,
    load_step,
    recipe,
    summary_rows,
)
from trainer.report.exported import find_export
from trainer.report.figures import detr_figure, evaluations_figure, pretraining_figure
from trainer.report.render import Report, render_html, render_markdown
from trainer.run import tracking

REPORT_FOLDER = "report"


def collect(run_root: str, steps: dict[str, str], baselines: dict[str, str] | None = None) -> Report:
    """Read every given step (dump URL or metrics.json URL per catalogue key; an empty URL counts as absent) and
    the random-init twins into a Report."""
    unknown = sorted(set(steps) - set(STEPS)) + sorted(set(baselines or {}) - set(EVALUATIONS))
    if unknown:
        raise ValueError(f"unknown report steps {unknown}; steps are {STEPS}, baselines {EVALUATIONS}")
    runs = {key: load_step(key, url) for key, url in steps.items() if url}
    twins = {key: load_step(key, url, baseline=True) for key, url in (baselines or {}).items() if url}
    rows = summary_rows(runs, twins)
    chance = {row.headline.step: row.chance for row in rows if row.headline.metric == "top-1"}
    knn_random = next((row.random for row in rows if row.headline.step == "eval-knn"), None)
    figures = [figure for figure in (
        pretraining_figure(runs["pretrain"], knn_random, chance.get("eval-knn")) if "pretrain" in runs else None,
        evaluations_figure(runs, twins, chance),
        detr_figure(runs.get("detr"), twins.get("detr"))) if figure is not None]
    pretrain, linear = runs.get("pretrain"), runs.get(catalogue.CLASSIFIER_STEP)
    export = find_export(run_root, pretrain.args if pretrain and pretrain.document else None,
                         linear is not None and linear.status in STATUSES_OK)
    return Report(run_root, runs, twins, rows, collect_warnings(runs, twins, rows),
                  recipe(runs["pretrain"]) if "pretrain" in runs else [], figures,
                  time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), export)


def find_steps(run_root: str) -> tuple[dict[str, str], dict[str, str]]:
    """The step folders under `run_root` by catalogue key, and the random-init twins' (a few existence checks)."""
    steps = {row.key: storage.join(run_root, row.key) for row in catalogue.STEPS}
    twins = {row.key: storage.join(run_root, row.key + catalogue.BASELINE_SUFFIX) for row in catalogue.EVALUATIONS}
    return ({key: url for key, url in steps.items() if storage.exists(url)},
            {key: url for key, url in twins.items() if storage.exists(url)})


@dataclass
class Written:
    report: Report
    url: str  # of report.html
    html: str
    markdown: str


def write_report(run_root: str, steps: dict[str, str] | None = None, baselines: dict[str, str] | None = None,
                 dest: str | None = None) -> Written:
    """Write report.html, report.md and the figures under `dest` (default `<run_root>/report`).

    steps / baselines: dump URL (or metrics.json URL) per catalogue key, for the steps and for the random-init
    twins of the evaluations; both None: the folders `find_steps` finds under `run_root`."""
    if steps is None and baselines is None:
        steps, baselines = find_steps(run_root)
        if not steps and not baselines:
            raise UserError(f"{run_root} holds no step folder ({', '.join(STEPS)}, or an evaluation's twin "
                            f"<step>{catalogue.BASELINE_SUFFIX}); pass the root the steps' --dump_path folders are in")
    report = collect(run_root, steps or {}, baselines)
    folder = dest or storage.join(run_root, REPORT_FOLDER)
    url = storage.join(folder, "report.html")
    page, markdown = render_html(report), render_markdown(report, url)
    for figure in report.figures:
        storage.atomic_write_bytes(storage.join(folder, figure.name), figure.png)
    storage.write_text(storage.join(folder, "report.md"), markdown)
    storage.write_text(url, page)
    tracking.log_report(run_root, {"report.html": page, "report.md": markdown})
    return Written(report, url, page, markdown)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_root", help="where the run's steps wrote (any fsspec URL): the folder holding "
                                         "pretrain/, eval-linear/, ...")
    parser.add_argument("--dest", default=None, help="where to write the report (default: RUN_ROOT/report)")


def run(args: argparse.Namespace) -> None:
    written = write_report(args.run_root, dest=args.dest)
    found = [run.title for run in (*written.report.steps.values(), *written.report.baselines.values())]
    print(f"report of {len(found)} step folder(s) ({', '.join(found)}): {written.url}", flush=True)
