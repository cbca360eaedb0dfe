"""What the `pretrain` component does: build the PyTorchJob, then run it on Kubernetes or locally.

Both launchers run the SAME job object: `pytorchjob` submits it to the Training Operator, `local` runs
its replicas on this machine with the operator's env (pipeline.local_replicas).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from pipeline.pytorchjob import PretrainJobSpec, build_pytorchjob
from trainer.errors import UserError

LAUNCHERS = ("pytorchjob", "local")


@dataclass(frozen=True)
class PretrainRequest:
    images_url: str
    dump_url: str
    arch: str
    image: str
    preset: str = ""
    config_url: str = ""
    extra_args: list[str] = field(default_factory=list)
    namespace: str = ""
    num_nodes: int = 1
    gpus_per_node: int = 1
    cpu_per_node: str = "8"
    memory_per_node: str = "64Gi"
    shm_size: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    s3_secret_name: str = ""
    timeout_s: float = 72 * 3600


def trainer_args(request: PretrainRequest) -> list[str]:
    args = ["--data_path", request.images_url, "--dump_path", request.dump_url, "--arch", request.arch]
    if request.preset:
        args += ["--preset", request.preset]
    if request.config_url:
        args += ["--config", request.config_url]
    return args + list(request.extra_args)


def job_name(dump_url: str) -> str:
    """Derived from the output location: a retried step finds (and follows) its own job."""
    return "unmix-pretrain-" + hashlib.sha256(dump_url.encode("utf-8")).hexdigest()[:12]


def job_spec(request: PretrainRequest, namespace: str) -> PretrainJobSpec:
    return PretrainJobSpec(
        name=job_name(request.dump_url), namespace=namespace, image=request.image,
        trainer_args=trainer_args(request), num_nodes=request.num_nodes, gpus_per_node=request.gpus_per_node,
        cpu_per_node=request.cpu_per_node, memory_per_node=request.memory_per_node, shm_size=request.shm_size,
        s3_secret_name=request.s3_secret_name, node_selector=dict(request.node_selector),
        tolerations=list(request.tolerations))


def launch_pretraining(request: PretrainRequest, launcher: str) -> None:
    if launcher not in LAUNCHERS:
        raise UserError(f"launcher {launcher!r} is not known; use one of {', '.join(LAUNCHERS)}")
    if launcher == "local":
        from pipeline.local_replicas import run_replicas

        run_replicas(build_pytorchjob(job_spec(request, namespace=request.namespace or "local")),
                     timeout_s=request.timeout_s)
        return

    from kubeflow.training import TrainingClient
    from kubeflow.training.utils.utils import get_default_target_namespace

    from pipeline.launcher import PyTorchJobLauncher

    namespace = request.namespace or get_default_target_namespace()
    job = build_pytorchjob(job_spec(request, namespace=namespace))
    pod_launcher = PyTorchJobLauncher(TrainingClient(namespace=namespace))
    if os.environ.get("HOSTNAME"):  # a pod's hostname is its name
        pod_launcher.own_by_pod(job, os.environ["HOSTNAME"])
    pod_launcher.run(job, timeout_s=request.timeout_s)
