"""Run a PyTorchJob's replicas as processes on this machine, the way the Training Operator runs pods.

Each replica's container command and args run unchanged, with the container's literal env plus the
env the operator injects for a job with a Master and `nprocPerNode` (MASTER_ADDR, MASTER_PORT,
WORLD_SIZE, RANK, PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PYTHONUNBUFFERED), and Kubernetes'
$(VAR) expansion of command and args. Env from Secrets is not resolved: the local environment
(AWS_* for S3) is inherited instead. Used by the local pipeline mode and by the harness test that
proves the manifest's command trains.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from kubeflow.training import models

from pipeline.pytorchjob import CONTAINER_NAME
from trainer.errors import UserError

_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True)
class Replica:
    replica_type: str  # Master or Worker
    index: int
    rank: int
    command: list[str]
    env: dict[str, str]

    @property
    def pod_name(self) -> str:
        return f"{self.replica_type.lower()}-{self.index}"


def expand_kubernetes_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' rule: $(NAME) becomes the env value when NAME is defined, $$ becomes $."""
    def _replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))
    return _VAR_REFERENCE.sub(_replace, text)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _training_container(template: Any) -> Any:
    for container in template.spec.containers:
        if container.name == CONTAINER_NAME:
            return container
    raise UserError(f"the PyTorchJob's pod template has no container named {CONTAINER_NAME!r}; "
                    "the Training Operator needs that name")


def operator_env(job: models.KubeflowOrgV1PyTorchJob, replica_type: str, index: int,
                 master_addr: str, master_port: int) -> dict[str, str]:
    """What the Training Operator (v1) appends to the `pytorch` container of replica (type, index)."""
    specs = job.spec.pytorch_replica_specs
    world_size = sum(spec.replicas for spec in specs.values())
    rank = index + 1 if replica_type == "Worker" else index
    return {
        "PYTHONUNBUFFERED": "1",
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(world_size),
        "RANK": str(rank),
        "PET_NNODES": str(world_size),
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": str(job.spec.nproc_per_node),
    }


def plan_replicas(job: models.KubeflowOrgV1PyTorchJob, master_port: int,
                  master_addr: str = "127.0.0.1") -> list[Replica]:
    replicas = []
    for replica_type in ("Master", "Worker"):
        spec = job.spec.pytorch_replica_specs.get(replica_type)
        if spec is None:
            continue
        container = _training_container(spec.template)
        literal_env = {var.name: var.value for var in container.env or [] if var.value is not None}
        for index in range(spec.replicas):
            env = {**literal_env, **operator_env(job, replica_type, index, master_addr, master_port)}
            command = [expand_kubernetes_vars(part, env) for part in [*(container.command or []),
                                                                       *(container.args or [])]]
            replicas.append(Replica(replica_type, index, int(env["RANK"]), command, env))
    return replicas


def _resolve_executable(command: list[str]) -> list[str]:
    """Find `torchrun` next to this interpreter first (the image has it on PATH; a venv may not)."""
    search_path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which(command[0], path=search_path)
    if found is None:
        raise UserError(f"{command[0]!r} was not found next to {sys.executable} nor on PATH; "
                        "install torch in this environment")
    return [found, *command[1:]]


def _pump(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"[{prefix}] {line}")
            out.flush()


def _wait_all(processes: list[tuple[Replica, subprocess.Popen[str]]], timeout_s: float | None) -> list[str]:
    """Wait for every replica; once one fails the others would only hang in a collective: stop them."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [process.poll() for _, process in processes]
        failed = [f"{replica.pod_name} (rank {replica.rank}) exited with code {code}"
                  for (replica, _), code in zip(processes, codes, strict=True) if code not in (None, 0)]
        if failed or all(code is not None for code in codes):
            return failed
        if deadline is not None and time.monotonic() > deadline:
            return [f"replicas still running after {timeout_s:.0f}s"]
        time.sleep(0.2)


def run_replicas(job: models.KubeflowOrgV1PyTorchJob, out: TextIO = sys.stdout,
                 timeout_s: float | None = None, extra_env: dict[str, str] | None = None) -> None:
    """Start every replica, stream their output with a pod-like prefix, and fail if any replica fails."""
    replicas = plan_replicas(job, master_port=free_port())
    lock = threading.Lock()
    processes: list[tuple[Replica, subprocess.Popen[str]]] = []
    pumps = []
    try:
        for replica in replicas:
            env = {**os.environ, **replica.env, **(extra_env or {})}
            # HOME=/tmp is for the pod's read-only root; here the user's HOME keeps caches where they are.
            env["HOME"] = os.environ.get("HOME", env["HOME"])
            process = subprocess.Popen(_resolve_executable(replica.command), env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
            processes.append((replica, process))
            pump = threading.Thread(target=_pump, args=(process.stdout, replica.pod_name, out, lock),
                                    daemon=True)
            pump.start()
            pumps.append(pump)
        failed = _wait_all(processes, timeout_s)
        for pump in pumps:
            pump.join(timeout=10)
        if failed:
            raise RuntimeError("local PyTorchJob replicas failed: " + "; ".join(failed))
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
