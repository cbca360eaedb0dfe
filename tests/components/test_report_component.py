"""The report's kfp component: `run_report` compiles with every URL optional and runs on kfp's local
SubprocessRunner (a few seconds); the DAG calls it.

No `from __future__ import annotations` here: kfp reads the pipeline function's annotations as types."""


import pytest
import yaml
from kfp import compiler, dsl, local
from test_report_page import evaluation, pretraining

from components.report import run_report


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
