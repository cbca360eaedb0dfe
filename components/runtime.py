"""What the component bodies call at run time, inside the trainer image (or the local .venv).

Component functions are embedded into the pipeline YAML as source, so they stay a few lines each and
delegate here: run a trainer command, read its metrics.json, record storage URLs on kfp artifacts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from trainer import storage
from trainer.cli import main
from trainer.errors import UserError
from trainer.run.boundary import run_guarded
from trainer.run.metrics import read_records

log = logging.getLogger(__name__)
Result = TypeVar("Result")

# The compiled default of `storage_root`: clearly not a bucket, refused by the first steps before any work.
STORAGE_ROOT_PLACEHOLDER = "s3://CHANGE-ME/runs"


def check_storage_root(storage_root: str) -> None:
    """UserError for the compiled placeholder (the stage step meets it first, the check step again)."""
    if "CHANGE-ME" in storage_root:
        raise UserError(f"storage_root is {storage_root}, a placeholder; set it to where the run may write, e.g. "
                        "--param storage_root=s3://BUCKET/runs; nothing was started")


def step_url(run_root: str, step: str) -> str:
    """Where one step writes, under the run's storage root (an fsspec URL)."""
    return storage.join(run_root, step)


def run_step(action: Callable[[], Result]) -> Result:
    """`action()` behind the trainer's error boundary: its value, or the step ends with the boundary's one
    `error:` line and exit code (a user error is exit 2, never a traceback)."""
    results: list[Result] = []
    code = run_guarded(lambda: results.append(action()))
    if code:
        raise SystemExit(code)
    return results[0]


def run_trainer(command: str, argv: list[str]) -> None:
    """Run `unmix-swav <command> <argv>` in this process, behind the trainer's error boundary: a failure ends
    the step with the command's one-line error and exit code."""
    log.info("unmix-swav %s %s", command, " ".join(map(str, argv)))
    code = main([command, *map(str, argv)])
    if code:
        raise SystemExit(code)


def read_train_steps(dump_url: str) -> list[dict[str, Any]]:
    """The `train_step` records of a run's metrics.jsonl, oldest first (kNN and epoch records left out)."""
    return read_records(dump_url, "train_step")


def numeric_items(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics dict (kfp Metrics hold only scalars); nested dicts become a.b keys.

    The echoed command-line `args` are settings, not results: they stay in metrics.json only.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or key == "args":
            continue
        if isinstance(value, (int, float)):
            flat[key] = float(value)
        elif isinstance(value, dict):
            flat.update({f"{key}.{inner}": number for inner, number in numeric_items(value).items()})
    return flat


def log_metrics(artifact: Any, metrics: dict[str, Any], url: str) -> dict[str, float]:
    """Copy the numbers into a kfp Metrics artifact and record where they came from."""
    numbers = numeric_items(metrics)
    for key, value in numbers.items():
        artifact.log_metric(key, value)
    artifact.metadata["url"] = url
    return numbers


def record_url(artifact: Any, url: str, **metadata: Any) -> None:
    """Artifacts on S3 are not readable by the local runner: the artifact itself is a pointer file."""
    artifact.metadata.update({"url": url, **metadata})
    with open(artifact.path, "w", encoding="utf-8") as handle:
        json.dump({"url": url, **metadata}, handle)


def log_report(written: Any, html: Any, markdown: Any, metrics: Any, confusion: Any) -> None:
    """kfp's artifacts of a report (trainer.report.build.Written): the page and the markdown as files, the headline
    numbers (with their random-init twins and gains) as Metrics, the linear probe's confusion matrix as
    ClassificationMetrics when eval-linear wrote one."""
    report = written.report
    for artifact, text in ((html, written.html), (markdown, written.markdown)):
        with open(artifact.path, "w", encoding="utf-8") as handle:
            handle.write(text)
        artifact.metadata["url"] = written.url
    for row in report.rows:
        for suffix, value in (("", row.pretrained), ("_random", row.random), ("_gain", row.gain)):
            if value is not None:
                metrics.log_metric(row.headline.flat_name + suffix, round(float(value), 4))
    steps = report.steps["pretrain"].records("train_step") if "pretrain" in report.steps else []
    if steps:
        metrics.log_metric("pretrain_final_loss", round(float(steps[-1]["loss"]), 4))
    linear = report.steps.get("eval-linear")
    document = linear.document if linear else None
    if document and document.get("confusion_matrix") and document.get("classes"):
        confusion.log_confusion_matrix([str(name) for name in document["classes"]],
                                       [[int(count) for count in row] for row in document["confusion_matrix"]])


def json_ints(options: dict[str, Any]) -> dict[str, Any]:
    """kfp passes dict parameters through protobuf Struct, where every number is a float: 6 -> 6.0."""
    return {key: int(value) if isinstance(value, float) and value.is_integer() else value
            for key, value in options.items()}
