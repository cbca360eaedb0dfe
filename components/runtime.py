"""What the component bodies call at run time, inside the trainer image (or the local .venv).

Component functions are embedded into the pipeline YAML as source, so they stay a few lines each and
delegate here: run a trainer command, read its metrics.json, record storage URLs on kfp artifacts.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from trainer import storage
from trainer.cli import main
from trainer.run.metrics import read_records

log = logging.getLogger(__name__)


def step_url(run_root: str, step: str) -> str:
    """Where one step writes, under the run's storage root (an fsspec URL)."""
    return storage.join(run_root, step)


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



def json_ints(options: dict[str, Any]) -> dict[str, Any]:
    """kfp passes dict parameters through protobuf Struct, where every number is a float: 6 -> 6.0."""
    return {key: int(value) if isinstance(value, float) and value.is_integer() else value
            for key, value in options.items()}
