"""The report of real runs: a 16-step pretraining with the kNN monitor, every evaluation (a semi-supervised one
diverging on purpose) and a tiny DETR, each beside its `--pretrained random` twin (about 25 s on 2 cores), then
the report as `unmix-swav report ROOT` writes it and as the pipeline's report step does (with kfp's artifacts),
the page looked at in headless Chromium (Debian package `chromium`; skipped, saying so, when it is absent)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from kfp.dsl import HTML, ClassificationMetrics, Markdown, Metrics

from components.runtime import log_report
from trainer.cli import main
from trainer.detr.synthetic_coco import make_shapes_coco
from trainer.report.build import collect, find_steps, write_report
from trainer.report.collect import EVALUATIONS, format_number

EVAL_FLAGS = ["--arch", "resnet_tiny", "--image_size", "32", "--batch_size", "8", "--workers", "0"]
DETR_FLAGS = ["--epochs", "1", "--arch", "resnet_tiny", "--hidden_dim", "32", "--enc_layers", "1", "--dec_layers", "1",
              "--dim_feedforward", "64", "--nheads", "4", "--num_queries", "10", "--image_size", "64",
              "--batch_size", "4", "--workers", "0", "--device", "cpu"]


def run(*argv: object) -> None:
    assert main([str(part) for part in argv]) == 0, argv


@pytest.fixture(scope="module")
def real_run(shapes_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report-run")
    coco = root / "coco"
    make_shapes_coco(str(coco), train_images=8, val_images=4, image_size=64, seed=0)
    run("pretrain", "--data_path", shapes_dir, "--dump_path", root / "pretrain", "--preset", "demo_cpu",
        "--epochs", "2", "--batch_size", "16", "--workers", "0", "--log_freq", "1", "--knn_eval_path", shapes_dir)
    steps = {"pretrain": str(root / "pretrain")}
    baselines = {}
    for weights, urls, suffix in ((root / "pretrain" / "backbone.pth", steps, ""), ("random", baselines, "-random")):
        for key, flags in (("eval-knn", []), ("eval-linear", ["--epochs", "2"]),
                           ("eval-semisup-1pct", ["--labels_perc", "1", "--epochs", "3", "--lr_last_layer", "50"]),
                           ("eval-semisup-10pct", ["--labels_perc", "10", "--epochs", "2", "--lr_last_layer", "0.05"])):
            urls[key] = str(root / f"{key}{suffix}")
            run(key.split("-1")[0], "--data_path", shapes_dir, "--pretrained", weights, "--dump_path", urls[key],
                *flags, *EVAL_FLAGS)
        urls["detr"] = str(root / f"detr{suffix}")
        run("detr", "--coco_path", coco, "--pretrained", weights, "--dump_path", urls["detr"], *DETR_FLAGS)
    run("report", root)  # the command a user runs on a finished run's root
    assert find_steps(str(root)) == (steps, baselines)
    outputs = {"html": HTML(name="report_html", uri=str(root / "kfp" / "report_html")),
               "markdown": Markdown(name="report_markdown", uri=str(root / "kfp" / "report_markdown")),
               "metrics": Metrics(name="headline_metrics", uri=str(root / "kfp" / "headline_metrics")),
               "confusion": ClassificationMetrics(name="linear_confusion", uri=str(root / "kfp" / "linear_confusion"))}
    (root / "kfp").mkdir()
    written = write_report(str(root), steps, baselines, dest=str(root / "kfp-report"))  # as the report step does
    log_report(written, outputs["html"], outputs["markdown"], outputs["metrics"], outputs["confusion"])
    url = str(root / "report" / "report.html")
    return {"root": root, "url": url, "steps": steps, "baselines": baselines, **outputs}


def test_the_report_of_real_runs_shows_each_number_its_baseline_and_what_went_wrong(real_run):
    report = collect(str(real_run["root"]), real_run["steps"], real_run["baselines"])
    rows = {(row.headline.step, row.headline.metric): row for row in report.rows}
    assert list(rows) == [("eval-knn", "top-1"), ("eval-linear", "top-1"), ("eval-semisup-1pct", "top-1"),
                          ("eval-semisup-10pct", "top-1"), ("detr", "box AP"), ("detr", "AP50")]
    for row in rows.values():
        assert row.pretrained is not None and row.random is not None
        assert row.chance == (25.0 if row.headline.step != "detr" else None)  # 4 classes
        assert row.status == ("diverged" if row.headline.step == "eval-semisup-1pct"
                              else "no_box_found" if row.headline.step == "detr" and row.pretrained == row.random == 0
                              else "below_baseline" if row.gain <= 0 else "ok")
    diverged = [text for text in report.warnings if text.startswith("Semi-supervised, 1% labels: diverged")]
    assert len(diverged) == 1 and "--lr_last_layer" in diverged[0]
    recipe = dict(report.recipe)
    assert "--epochs 2 (demo_cpu: 40)" in recipe["Flags that differ from demo_cpu"]
    assert recipe["Length"] == "8 steps, 2 epochs" and recipe["Scale"] == "1 process × 16 = global batch 16"
    assert recipe["Wall time"].endswith("(start to finish, restarts included)")  # from tb/ and metrics.json
    assert recipe["kNN monitor"].startswith("top-1 ")
    assert [figure.name for figure in report.figures] == ["pretraining.png", "evaluations.png", "detr.png"]

    page = Path(real_run["url"]).read_text()
    assert "<table id='summary'>" in page and page.count("data:image/png;base64,") == 3
    root = real_run["root"]
    assert Path(real_run["html"].path).read_text() == (root / "kfp-report" / "report.html").read_text()
    assert (root / "kfp-report" / "report.md").read_text() == Path(real_run["markdown"].path).read_text()
    summary = [line for line in (root / "report" / "report.md").read_text().splitlines() if line.startswith("|")]
    assert len(summary) == 8 and all(line in Path(real_run["markdown"].path).read_text() for line in summary)
    metrics = real_run["metrics"].metadata
    assert {f"{name}{suffix}" for name in ("knn_top1", "linear_top1", "semisup_1pct_top1", "semisup_10pct_top1",
                                           "detr_box_AP", "detr_AP50") for suffix in ("", "_random", "_gain")} \
        | {"pretrain_final_loss"} == set(metrics)
    matrix = real_run["confusion"].metadata["confusionMatrix"]
    assert len(matrix["annotationSpecs"]) == 4 and sum(map(sum, (row["row"] for row in matrix["rows"]))) == 32


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'browser-check';
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
    rows: [...document.querySelectorAll('#summary tr.result')].map(r => [...r.cells].map(c => c.innerText.trim())),
    header: [...document.querySelectorAll('#summary th')].map(c => c.innerText.trim()),
    warnings: document.querySelectorAll('#warnings li').length,
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install -y "
                                               "chromium; .ci/run installs it)")
@pytest.mark.slow
def test_the_page_renders_in_headless_chromium_with_its_table_and_every_image_decoded(real_run, tmp_path):
    page = Path(real_run["url"]).read_text()
    checked = tmp_path / "report.html"
    checked.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000",
         "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"chromium exit {result.returncode}, no check output; stderr: {result.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))

    assert seen["header"] == ["Evaluation", "Metric", "Pretrained", "Random init", "Gain", "Chance", "Status"]
    report = collect(str(real_run["root"]), real_run["steps"], real_run["baselines"])
    assert len(seen["rows"]) == len(report.rows) == 6
    for cells, row in zip(seen["rows"], report.rows, strict=True):
        assert cells[1] == row.headline.metric and cells[2].startswith(format_number(row.pretrained))
        assert cells[3] == format_number(row.random) and cells[4] == format_number(row.gain, sign="+")
        assert cells[6].startswith(row.status)
    assert [cells[0] for cells in seen["rows"]] == ["kNN (k = 20)", "Linear probe", "Semi-supervised, 1% labels",
                                                    "Semi-supervised, 10% labels", "DETR detection transfer", ""]
    assert seen["warnings"] == len(report.warnings) >= 1
    assert len(seen["images"]) == 3 and all(image["complete"] and image["width"] > 300 and image["height"] > 200
                                            for image in seen["images"]), seen["images"]
    assert seen["scrollWidth"] <= seen["innerWidth"], "the page is wider than a 1280 px window"
    assert set(EVALUATIONS) == set(real_run["baselines"])
