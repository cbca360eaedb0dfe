"""Check a JobSpec with the trainer's own checks, then run it: its job on Kubernetes, or the job's replicas here.

Both launchers run the SAME job object, a PyTorchJob or a TrainJob as `spec.job_backend` says (launch.backends):
`kubernetes` submits it to the Training Operator or Kubeflow Trainer and follows it (launch.kube), `local` runs
its replicas on this machine with the env and restart policy the cluster would give them (launch.local).
Nothing is created before `check` passed.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from launch import k8s_names
from launch.backends import build_job
from launch.spec import JobSpec
from trainer.errors import UserError

LAUNCHERS = ("kubernetes", "local")


def check(spec: JobSpec, out: TextIO | None = None) -> float:
    """The spec itself, then the trainer's checks of its flags for world size = nodes x processes per node,
    doing no work (seconds); raises UserError with the trainer's one-line message. Returns the seconds taken."""
    from trainer.cli import check_command

    out = out or sys.stdout
    started = time.monotonic()
    spec.validate()
    check_command(spec.command, list(spec.trainer_args), spec.world_size)
    seconds = time.monotonic() - started
    out.write(f"[launcher] unmix-swav {spec.command} flags checked for {spec.num_nodes} node(s) x "
              f"{spec.nproc_per_node} process(es) in {seconds:.1f}s\n")
    out.flush()
    return seconds


def run_job(spec: JobSpec, launcher: str, timeout_s: float, out: TextIO | None = None) -> None:
    """Check, then run `spec` to its end; raises UserError (bad flags, a cluster that refuses), JobFailed (the
    job's own failure, or pods that cannot start: launch.pending, within spec.pending_timeout_minutes)."""
    if launcher not in LAUNCHERS:
        raise UserError(f"launcher {launcher!r} is not known; use one of {', '.join(LAUNCHERS)}")
    k8s_names.check_seconds("timeout (seconds)", timeout_s)
    check(spec, out)
    job = build_job(spec)
    if launcher == "local":
        from launch.local import run_replicas

        run_replicas(job, out=out, timeout_s=timeout_s, max_restarts=spec.max_restarts)
        return

    from launch.kube import JobLauncher, job_api

    cluster_launcher = JobLauncher(job_api(spec.job_backend, namespace=spec.namespace), out=out,
                                   pending_timeout_s=spec.pending_timeout_minutes * 60)
    if os.environ.get("HOSTNAME"):  # a pod's hostname is its name
        cluster_launcher.own_by_run(job, os.environ["HOSTNAME"])
    cluster_launcher.run(job, timeout_s=timeout_s, max_restarts=spec.max_restarts)


def default_namespace() -> str:
    """The namespace of the pod this runs in (its service account's), else kubeconfig's, else `default`."""
    from kubeflow.training.utils.utils import get_default_target_namespace

    return get_default_target_namespace()
