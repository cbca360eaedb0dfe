"""The report's kfp component: `run_report` compiles with every URL optional and runs on kfp's local
SubprocessRunner (a few seconds); the DAG calls it. Its kfp artifacts (components.runtime.log_report) from a
report the trainer wrote (trainer.report.build.write_report).

No `from __future__ import annotations` here: kfp reads the pipeline function's annotations as types."""


from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl, local
from kfp.dsl import HTML, ClassificationMetrics, Markdown, Metrics
from report_folders import CLASSES, evaluation, full_run, pretraining

from components.report import run_report
from components.runtime import log_report
from trainer.report.build import collect, write_report


@dsl.pipeline(name="report-only")
def report_only(run_root: str, linear_url: str):
    run_report(run_root=run_root, linear_url=linear_url)


def test_run_report_compiles_with_every_url_optional(tmp_path):
    compiler.Compiler().compile(report_only, str(tmp_path / "pipeline.yaml"))
    spec = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    component = spec["components"]["comp-run-report"]
    parameters = component["inputDefinitions"]["parameters"]
    assert parameters.pop("run_root") == {"parameterType": "STRING"}
    assert set(parameters) == {f"{step}_url" for step in ("pretrain", "knn", "linear", "semisup_1pct", "semisup_10pct",
                                                          "detr")} | {f"{step}_random_url" for step in (
                                                              "knn", "linear", "semisup_1pct", "semisup_10pct", "detr")}
    assert all(value == {"defaultValue": "", "isOptional": True, "parameterType": "STRING"}
               for value in parameters.values())
    outputs = {name: value["artifactType"]["schemaTitle"]
               for name, value in component["outputDefinitions"]["artifacts"].items()}
    assert outputs == {"report_html": "system.HTML", "report_markdown": "system.Markdown",
                       "headline_metrics": "system.Metrics", "linear_confusion": "system.ClassificationMetrics"}


@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # the trainer image's deps are the .venv
@pytest.mark.slow
def test_run_report_runs_on_the_local_runner(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    pretrain = pretraining(tmp_path / "run" / "pretrain")
    linear = evaluation(tmp_path / "run" / "eval-linear", "eval-linear", [50.0, 75.0], classes=["a", "b"],
                        confusion_matrix=[[3, 1], [1, 3]])
    twin = evaluation(tmp_path / "run" / "eval-linear-random", "eval-linear", [40.0, 50.0], random=True)
    task = run_report(run_root=str(tmp_path / "run"), pretrain_url=pretrain, linear_url=linear + "/metrics.json",
                      linear_random_url=twin)
    url = task.outputs["Output"]
    assert url == str(tmp_path / "run" / "report" / "report.html")
    assert task.outputs["headline_metrics"].metadata == {"linear_top1": 75.0, "linear_top1_random": 50.0,
                                                         "linear_top1_gain": 25.0, "pretrain_final_loss": 7.0}
    assert task.outputs["linear_confusion"].metadata["confusionMatrix"]["rows"] == [{"row": [3, 1]}, {"row": [1, 3]}]
    with open(task.outputs["report_markdown"].path, encoding="utf-8") as handle:
        assert "| Linear probe | top-1 | 75.0 | 50.0 | +25.0 | 50.0 | ok |" in handle.read()
    with open(task.outputs["report_html"].path, encoding="utf-8") as handle:
        assert handle.read() == (tmp_path / "run" / "report" / "report.html").read_text()


def artifacts(tmp_path: Path) -> tuple[HTML, Markdown, Metrics, ClassificationMetrics]:
    return (HTML(name="report_html", uri=str(tmp_path / "report_html")),
            Markdown(name="report_markdown", uri=str(tmp_path / "report_markdown")),
            Metrics(name="headline_metrics", uri=str(tmp_path / "headline_metrics")),
            ClassificationMetrics(name="linear_confusion", uri=str(tmp_path / "linear_confusion")))


def test_log_report_fills_the_page_markdown_metrics_and_confusion_artifacts(tmp_path):
    steps, baselines = full_run(tmp_path / "run")
    html_artifact, markdown_artifact, metrics, confusion = artifacts(tmp_path)
    written = write_report(str(tmp_path / "run"), steps, baselines)
    log_report(written, html_artifact, markdown_artifact, metrics, confusion)
    assert (tmp_path / "report_html").read_text() == (tmp_path / "run" / "report" / "report.html").read_text()
    assert html_artifact.metadata["url"] == written.url == markdown_artifact.metadata["url"]
    assert (tmp_path / "report_markdown").read_text() == (tmp_path / "run" / "report" / "report.md").read_text()
    assert metrics.metadata["linear_top1"] == 84.375 and metrics.metadata["linear_top1_random"] == 45.0
    assert metrics.metadata["linear_top1_gain"] == 39.375 and metrics.metadata["detr_AP50"] == 6.0
    assert metrics.metadata["knn_top1"] == 60.0 and metrics.metadata["pretrain_final_loss"] == 7.0
    matrix = confusion.metadata["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == CLASSES
    assert matrix["rows"][2] == {"row": [0, 0, 6, 2]}


def test_no_confusion_matrix_no_classification_metrics(tmp_path):
    url = evaluation(tmp_path / "eval-linear", "eval-linear", [50.0])
    html_artifact, markdown_artifact, metrics, confusion = artifacts(tmp_path)
    log_report(write_report(str(tmp_path), {"eval-linear": url}), html_artifact, markdown_artifact, metrics,
               confusion)
    assert "confusionMatrix" not in confusion.metadata
    assert metrics.metadata == {"linear_top1": 50.0, "linear_top5": 100.0}  # classes unknown: top-5 kept
    report = collect(str(tmp_path), {"eval-linear": url})
    assert report.rows[0].headline.metric == "top-1" and report.rows[0].chance is None


class _Artifact:
    """Stands in for kfp's output artifacts: the step must end before it logs anything to them."""

    def __init__(self, path: Path) -> None:
        self.path, self.metadata = str(path), {}


def test_a_report_that_cannot_be_written_ends_the_step_with_one_line_and_exit_2(tmp_path, capsys):
    linear = evaluation(tmp_path / "run" / "eval-linear", "eval-linear", [50.0, 75.0])
    (Path(linear) / "metrics.json.sha256").write_text("not a digest\n")  # a damaged digest record
    artifacts = {name: _Artifact(tmp_path / name) for name in ("report_html", "report_markdown", "headline_metrics",
                                                              "linear_confusion")}
    with pytest.raises(SystemExit) as ended:
        run_report.python_func(run_root=str(tmp_path / "run"), linear_url=linear, **artifacts)
    err = capsys.readouterr().err
    assert ended.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "metrics.json.sha256 is damaged" in errors[0], err
