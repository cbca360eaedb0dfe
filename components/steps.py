"""The pipeline's side of the step catalogue (trainer/steps.py): which pipeline parameters size and flag each
distributed step, and the memory of the pod that launches its job.

The DAG, the check step and the report step read these rows; their kfp signatures stay explicit (kfp reads
them), and tests/components/test_catalogue.py holds them to the rows. Adding an evaluation: a row in
trainer/steps.py, a row here, its parameters (`<name>_args`, sizes) in the DAG's and the check step's
signatures, its `<slug>_url` / `<slug>_random_url` in the report step's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launch.spec import quantity
from trainer import steps as catalogue


@dataclass(frozen=True)
class PipelineStep:
    key: str  # the catalogue row's
    args: str  # the pipeline parameter with the user's extra trainer flags
    num_nodes: str  # the pipeline parameters that size its job
    gpus_per_node: str
    launcher_memory: str = "2Gi"  # of the pipeline pod that checks, launches and follows the job

    @property
    def step(self) -> catalogue.Step:
        return catalogue.step(self.key)


PIPELINE_STEPS = (
    PipelineStep("pretrain", "pretrain_args", "num_nodes", "gpus_per_node"),
    # kNN runs at the linear step's size: it has no size parameters of its own
    PipelineStep("eval-knn", "knn_args", "linear_num_nodes", "linear_gpus_per_node"),
    PipelineStep("eval-linear", "linear_args", "linear_num_nodes", "linear_gpus_per_node"),
    PipelineStep("eval-semisup-1pct", "semisup_args", "semisup_num_nodes", "semisup_gpus_per_node"),
    PipelineStep("eval-semisup-10pct", "semisup_args", "semisup_num_nodes", "semisup_gpus_per_node"),
    # its launcher reads the COCO annotations again to check them (instances_train2017.json is 450 MB of JSON)
    PipelineStep("detr", "detr_args", "detr_num_nodes", "detr_gpus_per_node", launcher_memory="8Gi"),
)
PRETRAIN_STEP = next(row for row in PIPELINE_STEPS if not row.step.evaluation)
EVALUATION_STEPS = tuple(row for row in PIPELINE_STEPS if row.step.evaluation)
# The check step runs every step's checks, DETR's included: it needs the largest launcher's memory.
CHECK_MEMORY = max((row.launcher_memory for row in PIPELINE_STEPS), key=quantity)


def evaluation_row(command: str, labels_percent: int) -> PipelineStep:
    """The row an `evaluate` task runs: its command and label share (0: none)."""
    for row in EVALUATION_STEPS:
        if row.step.command == command and (row.step.labels_percent or 0) == int(labels_percent):
            return row
    known = ", ".join(f"{row.step.command} {row.step.labels_percent or 0}" for row in EVALUATION_STEPS)
    raise ValueError(f"no evaluation runs {command!r} with labels_percent {labels_percent}; known: {known}")


def report_parameter(key: str, baseline: bool = False) -> str:
    """The report step's input for a step's dump URL (or its random-init twin's): linear_url, linear_random_url."""
    return catalogue.step(key).slug + ("_random" if baseline else "") + "_url"


def report_urls(inputs: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The report step's inputs as the trainer's report reads them: the URLs per catalogue key, the twins'."""
    steps = {row.key: inputs[report_parameter(row.key)] for row in PIPELINE_STEPS}
    twins = {row.key: inputs[report_parameter(row.key, True)] for row in EVALUATION_STEPS}
    return steps, twins
