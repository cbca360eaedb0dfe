"""The run report from hand-written step folders (no training; about 5 s): the summary table with its random-init
twins, gains, chance, published figures and statuses; the recipe; the warnings; the page, markdown and figures
written. (kfp's artifacts of the report: tests/components/test_report_component.py.)"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from report_folders import CLASSES, detr, evaluation, full_run, pretrain_args, pretraining

from trainer.config import FLAGS
from trainer.report.build import collect, write_report
from trainer.report.collect import differing_flags, dump_of, format_number
from trainer.report.render import render_html


def rows_of(report) -> dict[tuple[str, str], object]:
    return {(row.headline.step, row.headline.metric): row for row in report.rows}


def test_the_summary_table_sets_each_number_beside_its_random_init_twin(tmp_path):
    steps, baselines = full_run(tmp_path / "run")
    rows = rows_of(collect(str(tmp_path / "run"), steps, baselines))
    assert list(rows) == [("eval-knn", "top-1"), ("eval-linear", "top-1"), ("eval-semisup-1pct", "top-1"),
                          ("eval-semisup-10pct", "top-1"), ("detr", "box AP"), ("detr", "AP50")]  # no top-5 of 4
    linear = rows[("eval-linear", "top-1")]
    assert (linear.pretrained, linear.random, linear.gain, linear.chance) == (84.375, 45.0, 39.375, 25.0)
    assert linear.status == "ok" and linear.best == "best 87.5 at epoch 2"
    assert rows[("eval-knn", "top-1")].chance == 25.0  # from the evaluations of the same data
    assert rows[("eval-knn", "top-1")].title == "kNN (k = 20)"
    semisup_1 = rows[("eval-semisup-1pct", "top-1")]
    assert (semisup_1.status, semisup_1.gain) == ("diverged", 0.0)  # diverged outranks below_baseline
    semisup_10 = rows[("eval-semisup-10pct", "top-1")]
    assert (semisup_10.status, semisup_10.gain) == ("below_baseline", -5.0)
    ap, ap50 = rows[("detr", "box AP")], rows[("detr", "AP50")]
    assert (round(ap.pretrained, 6), round(ap.random, 6), ap.chance) == (2.0, 1.0, None)  # AP x 100
    assert (round(ap50.pretrained, 6), ap50.status) == (6.0, "ok")
    assert all(row.published is None for row in rows.values())  # demo_cpu is not a published recipe


def test_warnings_name_every_problem_first(tmp_path):
    steps, baselines = full_run(tmp_path / "run")
    steps["pretrain"] = pretraining(tmp_path / "run" / "pretrain", status="collapsed", skipped=3,
                                    reason="the loss stayed at ln(K) for epoch 1: try epsilon 0.03")
    steps["eval-semisup-1pct"] = evaluation(tmp_path / "run" / "eval-semisup-1pct", "eval-semisup", [30.0, 25.0],
                                            classes=CLASSES, status="diverged",
                                            reason="lower --lr_last_layer")
    steps["detr"] = str(tmp_path / "run" / "detr-never-finished")
    warnings = collect(str(tmp_path / "run"), steps, baselines).warnings
    assert warnings[0] == "Pretraining: collapsed — the loss stayed at ln(K) for epoch 1: try epsilon 0.03"
    assert "Pretraining: 3 undecodable files skipped (their paths are in the step's log)" in warnings
    assert "Semi-supervised, 1% labels: diverged — lower --lr_last_layer" in warnings
    assert any(text.startswith("DETR detection transfer: no metrics.json under ") for text in warnings)
    assert ("Semi-supervised, 10% labels top-1: pretrained 50.0 is not above random init (55.0): below_baseline"
            in warnings)
    assert ("Semi-supervised, 1% labels top-1: pretrained 25.0 is not above random init (25.0): below_baseline "
            "and at chance (25.0)") in warnings
    assert not any("Linear probe" in text or "kNN" in text for text in warnings)


def test_detr_rows_where_neither_detector_found_a_box_say_so_instead_of_below_baseline(tmp_path):
    steps, baselines = full_run(tmp_path / "run")
    steps["detr"] = detr(tmp_path / "run" / "detr", 0.0, 0.0)
    baselines["detr"] = detr(tmp_path / "run" / "detr-random", 0.0, 0.0, random=True)
    report = collect(str(tmp_path / "run"), steps, baselines)
    rows = rows_of(report)
    assert rows[("detr", "box AP")].status == rows[("detr", "AP50")].status == "no_box_found"
    detr_warnings = [text for text in report.warnings if text.startswith("DETR")]
    assert detr_warnings == [
        "DETR detection transfer: AP50 is 0 — neither the pretrained detector nor the random-init one found a box "
        "after 2 epochs. DETR needs hundreds of epochs before it places boxes (the protocol trains 300; this run "
        "trained 2), so these rows measure nothing about the pretraining: no_box_found, not a loss to random init"]
    page = render_html(report)
    assert "no_box_found" in page and "neither detector found a box" in page
    baselines["detr"] = detr(tmp_path / "run" / "detr-random", 0.01, 0.03, random=True)  # random init found some
    rows = rows_of(collect(str(tmp_path / "run"), steps, baselines))
    assert rows[("detr", "AP50")].status == "below_baseline"


def test_numbers_under_1_keep_two_decimals():
    assert [format_number(v) for v in (None, 0.0, 0.0612, 0.5, 1.04, 66.04)] == ["—", "0.0", "0.06", "0.50", "1.0",
                                                                                "66.0"]
    assert format_number(0.06, sign="+") == "+0.06" and format_number(-9.26, sign="+") == "-9.3"


def test_a_top5_row_where_both_trunks_score_100_is_saturated_not_below_baseline(tmp_path):
    six = [*CLASSES, "cross", "ring"]  # top-5 of 6 classes: chance 83.3, both at the ceiling
    steps, baselines = full_run(tmp_path / "run")
    confusion = {"classes": six, "confusion_matrix": [[1 if i == j else 0 for j in range(6)] for i in range(6)]}
    steps["eval-linear"] = evaluation(tmp_path / "run" / "eval-linear", "eval-linear", [70.0], **confusion)
    baselines["eval-linear"] = evaluation(tmp_path / "run" / "eval-linear-random", "eval-linear", [65.0],
                                          random=True, **confusion)
    report = collect(str(tmp_path / "run"), steps, baselines)
    rows = rows_of(report)
    assert rows[("eval-linear", "top-5")].status == "saturated"
    assert rows[("eval-linear", "top-1")].status == "ok"
    assert not any("Linear probe top-5" in text for text in report.warnings)
    assert "saturated: both trunks score 100" in render_html(report)


def test_a_twin_run_with_other_flags_is_named(tmp_path):
    steps, baselines = full_run(tmp_path / "run")
    baselines["eval-linear"] = evaluation(tmp_path / "run" / "other", "eval-linear", [40.0, 45.0], random=True)
    warnings = collect(str(tmp_path / "run"), steps, baselines).warnings
    assert warnings[-1] == ("Linear probe: the random-init twin ran with other flags (epochs 3 vs 2): the gain "
                            "compares unlike runs")


def test_the_recipe_lists_what_differs_from_the_preset(tmp_path):
    url = pretraining(tmp_path / "pretrain", epochs=2, batch_size=32, base_lr=0.004, nmb_crops=[2, 2],
                      size_crops=[32, 16], min_scale_crops=[0.3, 0.1], max_scale_crops=[1.0, 0.3])
    recipe = dict(collect(str(tmp_path), {"pretrain": url}).recipe)
    assert recipe["Preset"] == "demo_cpu"
    assert recipe["Flags that differ from demo_cpu"] == [
        "--nmb_crops 2 2 (demo_cpu: 2)", "--size_crops 32 16 (demo_cpu: 32)",
        "--min_scale_crops 0.3 0.1 (demo_cpu: 0.3)", "--max_scale_crops 1.0 0.3 (demo_cpu: 1.0)",
        "--epochs 2 (demo_cpu: 40)", "--base_lr 0.004 (demo_cpu: 0.002)"]
    assert recipe["Scale"] == "2 processes × 32 = global batch 64"
    assert recipe["Length"] == "8 steps, 2 epochs"
    assert recipe["Throughput"] == "105 images/s (median of the logged steps)"  # the first logged step left out
    assert recipe["Trunk and crops"] == "resnet_tiny; 2×32 px (scale 0.3–1) + 2×16 px (scale 0.1–0.3)"
    assert recipe["kNN monitor"] == "top-1 55.0 at step 8 (first 40.0 at step 4)"
    assert recipe["Wall time"] == "not known"  # no TensorBoard events in a hand-written folder
    assert differing_flags({**pretrain_args(), "preset": None, "epochs": 100}) == [
        (name, pretrain_args()[name], FLAGS[name][2]) for name in FLAGS
        if name not in ("data_path", "dump_path", "epochs") and pretrain_args()[name] != FLAGS[name][2]]


def test_a_published_preset_brings_its_reference_figures(tmp_path):
    steps = {"pretrain": pretraining(tmp_path / "pretrain", preset="swav_200ep_bs256"),
             "eval-linear": evaluation(tmp_path / "eval-linear", "eval-linear", [70.1], classes=CLASSES),
             "eval-semisup-10pct": evaluation(tmp_path / "eval-semisup-10pct", "eval-semisup", [66.0],
                                              classes=CLASSES)}
    report = collect(str(tmp_path), steps)
    rows = rows_of(report)
    assert rows[("eval-linear", "top-1")].published.value == 72.7
    assert rows[("eval-semisup-10pct", "top-1")].published.value == 70.2
    assert ("eval-linear", "top-5") not in rows  # 4 classes: top-5 is always 100
    page = render_html(report)
    assert "<th>Published</th>" in page and ">72.7<" in page and "comparable only with a full run" in page


def test_missing_steps_and_baselines_are_left_out(tmp_path):
    steps, _ = full_run(tmp_path / "run")
    report = collect(str(tmp_path / "run"), {"pretrain": steps["pretrain"], "eval-linear": steps["eval-linear"],
                                             "detr": ""}, {"eval-linear": ""})
    assert [row.headline.step for row in report.rows] == ["eval-linear"]
    assert report.rows[0].random is None and report.rows[0].gain is None and report.rows[0].status == "ok"
    assert [figure.name for figure in report.figures] == ["pretraining.png", "evaluations.png"]
    assert report.warnings == []
    assert dump_of("s3://b/run/eval-linear/metrics.json") == "s3://b/run/eval-linear" == dump_of("s3://b/run/eval-linear/")


def test_write_report_writes_the_page_markdown_and_figures(tmp_path):
    steps, baselines = full_run(tmp_path / "run")
    steps["eval-linear"] += "/metrics.json"  # what the evaluation steps return
    written = write_report(str(tmp_path / "run"), steps, baselines)
    report_dir = tmp_path / "run" / "report"
    assert written.url == str(report_dir / "report.html")
    page = (report_dir / "report.html").read_text()
    assert page == written.html
    for name in ("pretraining.png", "evaluations.png", "detr.png"):
        png = (report_dir / name).read_bytes()
        assert png.startswith(b"\x89PNG") and base64.b64encode(png).decode() in page
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 3 and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http" not in page.replace(written.url, "")  # self-contained: nothing fetched
    for dumped in ("best.lr", "pretrained.expected", "<td>url</td>", "status_reason", "box_ap."):
        assert dumped not in page
    markdown = (report_dir / "report.md").read_text()
    assert markdown == written.markdown
    assert "| Linear probe | top-1 | 84.4 | 45.0 | +39.4 | 25.0 | ok |" in markdown
    assert "| Semi-supervised, 1% labels | top-1 | 25.0 | 25.0 | +0.0 | 25.0 | diverged |" in markdown


def test_values_are_escaped(tmp_path):
    steps, _ = full_run(tmp_path / "run")
    steps["eval-knn"] = evaluation(tmp_path / "run" / "knn", "eval-knn", [50.0], status="diverged",
                                   reason="<script>alert(1)</script>")
    page = render_html(collect(str(tmp_path / "<run>"), steps))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;run&gt;" in page


def test_a_pretraining_that_stopped_still_shows_its_curves_and_settings(tmp_path):
    folder = tmp_path / "run" / "pretrain"
    pretraining(folder, epochs=2)
    (folder / "params.json").write_text(json.dumps(pretrain_args(epochs=2, world_size=1)))
    (folder / "metrics.json").unlink()  # stopped: a non-finite loss, a kill
    report = collect(str(tmp_path / "run"), {"pretrain": str(folder)})
    assert report.warnings == [f"Pretraining: no metrics.json under {folder}: the step did not finish"]
    assert [figure.name for figure in report.figures] == ["pretraining.png"]
    recipe = dict(report.recipe)
    assert recipe["Preset"] == "demo_cpu" and recipe["Flags that differ from demo_cpu"] == ["--epochs 2 (demo_cpu: 40)"]
    assert recipe["Status"].startswith("missing: no metrics.json") and "Scale" not in recipe


def test_the_recipe_shows_what_auto_scale_derived_with_its_rules(tmp_path):
    """A run with --auto_scale keeps its plan as a `plan` record: the recipe lists each derived flag with its rule."""
    import argparse

    from trainer.plan.planner import plan_for

    cfg = argparse.Namespace(**pretrain_args(arch="resnet_tiny", optimizer="lars", batch_size=64, queue_length=0))
    plan = plan_for(cfg, 1, 8, "h100", {"batch_size", "arch"}).to_json()
    url = pretraining(tmp_path / "pretrain", arch="resnet_tiny")
    with open(Path(url) / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"kind": "plan", "step": 0, **plan}) + "\n")
    scaled = dict(collect(str(tmp_path), {"pretrain": url}).recipe)["Auto-scaled"]
    assert any(line.startswith(f"--base_lr {plan['derived']['base_lr']}: ") and "256" in line for line in scaled)
    assert "for 1 x 8 h100, global batch 512 (--auto_scale; unmix-swav plan)" in scaled
