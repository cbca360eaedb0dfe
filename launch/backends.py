"""The job object of a JobSpec, by its backend: a PyTorchJob (Training Operator v1) or a TrainJob (Trainer v2)."""

from __future__ import annotations

from typing import Any

from launch import pytorchjob, trainjob
from launch.spec import JobSpec


def build_job(spec: JobSpec) -> Any:
    """The SDK model of the job `spec.job_backend` names (validated)."""
    if spec.job_backend == "trainjob":
        return trainjob.build_trainjob(spec)
    return pytorchjob.build_pytorchjob(spec)


def to_manifest(job: Any) -> dict[str, Any]:
    """Either job as the API server receives it (camelCase JSON, no nulls)."""
    if getattr(job, "kind", None) == trainjob.KIND:
        return trainjob.to_manifest(job)
    return pytorchjob.to_manifest(job)
