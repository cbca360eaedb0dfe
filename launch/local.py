"""Run a job's replicas as processes on this machine, the way the Training Operator or Kubeflow Trainer runs its pods.

Each replica's container command and args run unchanged, with the container's literal env plus what the
cluster injects, and Kubernetes' $(VAR) expansion of command and args. Env from Secrets is not resolved: the
local environment (AWS_* for S3) is inherited.

- A PyTorchJob (Training Operator v1) with a Master and `nprocPerNode`: the operator injects MASTER_ADDR,
  MASTER_PORT, WORLD_SIZE, RANK, PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE and PYTHONUNBUFFERED. Restarts
  follow `restartPolicy: ExitCode` (pkg/controller.v1/common/pod.go in v1.9): a replica that exits 0 is done;
  1-127 fails the job at once and the other replicas are stopped (cleanPodPolicy Running); 128-255, or killed
  by a signal, and that replica is started again, like a deleted and recreated pod.
- A TrainJob (Trainer v2) on our torch runtime: the torch plugin injects PET_NNODES, PET_NPROC_PER_NODE,
  PET_NODE_RANK (the Job completion index), PET_MASTER_ADDR and PET_MASTER_PORT (the master here is
  127.0.0.1 and a free port instead of `<job>-node-0-0.<job>:29500`). Restarts follow the runtime's pod
  failure policy and JobSet failure policy (k8s/trainer-v2/cluster/runtime.yaml): 1-127 fails the job at once;
  128-255 fails the node's Job, and JobSet restarts the whole group (every node stopped and started again).

Either way at most `max_restarts` times. Killing a replica kills its torchrun and all its workers together, as
a lost pod does. Used by the local pipeline and by the harness tests that prove the manifests' commands train,
fail and restart as they should.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubeflow.training import models
from kubeflow_trainer_api import models as trainer_models

from launch import trainjob
from launch.errors import JobFailed, is_retryable
from launch.pytorchjob import CONTAINER_NAME
from launch.torchrun import signal_exit_code
from trainer.errors import UserError

_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


POD_ONLY_ENV = ("UNMIX_SHARD_CACHE", "UNMIX_SHARD_CACHE_GB")  # set for the pod's emptyDir mount


@dataclass(frozen=True)
class Replica:
    replica_type: str  # Master or Worker
    index: int
    rank: int
    command: list[str]
    env: dict[str, str]

    @property
    def pod_name(self) -> str:
        if self.replica_type == trainjob.CONTAINER_NAME:  # JobSet: <job>-node-<job index>-<completion index>
            return f"node-0-{self.index}"
        return f"{self.replica_type.lower()}-{self.index}"


def expand_kubernetes_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' rule: $(NAME) becomes the env value when NAME is defined, $$ becomes $."""
    def _replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
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


def torch_plugin_env(job: trainer_models.TrainerV1alpha1TrainJob, index: int, master_addr: str,
                     master_port: int) -> dict[str, str]:
    """What Kubeflow Trainer v2's torch plugin adds to the `node` container of node `index`."""
    trainer = job.spec.trainer
    return {
        "PET_NNODES": str(trainer.num_nodes or 1),
        "PET_NPROC_PER_NODE": str(trainer.num_proc_per_node or 1),
        "PET_NODE_RANK": str(index),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
    }


def _plan_trainjob(job: trainer_models.TrainerV1alpha1TrainJob, master_port: int, master_addr: str) -> list[Replica]:
    trainer = job.spec.trainer
    literal_env = {var.name: var.value for var in trainer.env or [] if var.value is not None}
    replicas = []
    for index in range(trainer.num_nodes or 1):
        env = {**literal_env, **torch_plugin_env(job, index, master_addr, master_port)}
        command = [expand_kubernetes_vars(part, env) for part in [*(trainer.command or []), *(trainer.args or [])]]
        replicas.append(Replica(trainjob.CONTAINER_NAME, index, index, command, env))
    return replicas


def plan_replicas(job: Any, master_port: int, master_addr: str = "127.0.0.1") -> list[Replica]:
    """Every node of a PyTorchJob or a TrainJob, with its command and env as its pod would run them."""
    if isinstance(job, trainer_models.TrainerV1alpha1TrainJob):
        return _plan_trainjob(job, master_port, master_addr)
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
    """The image's `python` is this interpreter here; other programs are looked up next to it first."""
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    search_path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which(command[0], path=search_path)
    if found is None:
        raise UserError(f"{command[0]!r} was not found next to {sys.executable} nor on PATH")
    return [found, *command[1:]]


def _pump(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"[{prefix}] {line}")
            out.flush()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc): torchrun starts its workers in sessions of their own, so a
    process group does not hold them, while a pod's cgroup does."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def signal_tree(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class _Running:
    replica: Replica
    process: subprocess.Popen[str]
    pump: threading.Thread
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    restart_at: float | None = None  # down until then, like a pod between deletion and re-creation


class LocalJob:
    """The replicas of one job as local process groups, under its backend's restart policy."""

    def __init__(self, job: Any, max_restarts: int, out: TextIO | None = None,
                 extra_env: dict[str, str] | None = None, restart_delay_s: float = 1.0) -> None:
        """`restart_delay_s`: how long a failed replica stays down, as a deleted pod does until the controller's
        next reconcile has created it again and the kubelet has started it."""
        self.job, self.out, self.extra_env = job, out or sys.stdout, dict(extra_env or {})
        self.restart_delay_s = restart_delay_s
        self.max_restarts = max_restarts
        # JobSet restarts every Job of a TrainJob together; the v1 operator recreates the failed pod only.
        self.group_restarts = isinstance(job, trainer_models.TrainerV1alpha1TrainJob)
        self.replicas = plan_replicas(job, master_port=free_port())
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}

    @property
    def restarts(self) -> int:
        """Restarts of the group: the most any replica was restarted (one group restart recreates them all)."""
        return max((running.restarts for running in self._running.values()), default=0)

    @property
    def exit_codes(self) -> dict[str, list[int]]:
        return {name: list(running.exit_codes) for name, running in self._running.items()}

    def say(self, message: str) -> None:
        with self._lock:
            self.out.write(f"[launcher] {message}\n")
            self.out.flush()

    def _start(self, replica: Replica) -> tuple[subprocess.Popen[str], threading.Thread]:
        # PYTHONUNBUFFERED: the v1 operator sets it; here it also keeps every backend's log lines live in the pipes.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **replica.env, **self.extra_env}
        # HOME=/tmp is for the pod's read-only root; here the user's HOME keeps caches where they are.
        env["HOME"] = os.environ.get("HOME", env["HOME"])
        # The shard cache's pod volume does not exist here: the local default (or the user's own) applies.
        for name in POD_ONLY_ENV:
            if name in os.environ:
                env[name] = os.environ[name]
            else:
                env.pop(name, None)
        process = subprocess.Popen(_resolve_executable(replica.command), env=env, text=True, bufsize=1,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        pump = threading.Thread(target=_pump, args=(process.stdout, replica.pod_name, self.out, self._lock),
                                daemon=True)
        pump.start()
        return process, pump

    def kill_replica(self, pod_name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a replica's torchrun and all its workers at once, as a lost node (or the OOM killer) would."""
        signal_tree(process_tree(self._running[pod_name].process.pid), sig)

    def run(self, timeout_s: float | None = None) -> None:
        """Run to the end: returns when every replica exited 0, raises JobFailed otherwise."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            for replica in self.replicas:
                process, pump = self._start(replica)
                self._running[replica.pod_name] = _Running(replica, process, pump)
            self._supervise(deadline, timeout_s)
        finally:
            self._stop_all()

    def _supervise(self, deadline: float | None, timeout_s: float | None) -> None:
        done: set[str] = set()
        while len(done) < len(self._running):
            for name, running in self._running.items():
                code = running.process.poll()
                if name in done or code is None or running.restart_at is not None:
                    continue
                running.pump.join(timeout=10)
                code = signal_exit_code(code)
                running.exit_codes.append(code)
                if code == 0:
                    done.add(name)
                    if running.replica.replica_type == "Master":  # the operator's success policy: Master done
                        self._let_workers_finish(done)
                        return
                elif not is_retryable(code):
                    raise JobFailed(f"replica {name} (rank {running.replica.rank}) exited with {code}, a permanent "
                                    f"failure: the job failed after {self.restarts} restart(s)", exit_code=code)
                elif self.group_restarts:
                    self._restart_group(name, code)
                    done.clear()
                    break
                elif running.restarts >= self.max_restarts:
                    raise JobFailed(f"replica {name} exited with {code} (retryable) after {running.restarts} "
                                    f"restart(s), the budget of max_restarts={self.max_restarts}: the job failed")
                else:
                    running.restarts += 1
                    self.say(f"restart {running.restarts}/{self.max_restarts}: replica {name} exited with {code} "
                             "(retryable); starting it again, it resumes from the last checkpoint")
                    running.restart_at = time.monotonic() + self.restart_delay_s
            for running in self._running.values():
                if running.restart_at is not None and time.monotonic() >= running.restart_at:
                    running.restart_at = None
                    running.process, running.pump = self._start(running.replica)
            if deadline is not None and time.monotonic() > deadline:
                raise JobFailed(f"the job's replicas were still running after {timeout_s:.0f}s; they were stopped")
            time.sleep(0.2)

    def _restart_group(self, name: str, code: int) -> None:
        """JobSet's RestartJobSet: the failed node's Job failed, so every Job of the group is recreated."""
        if self.restarts >= self.max_restarts:
            raise JobFailed(f"replica {name} exited with {code} (retryable) after {self.restarts} restart(s) of "
                            f"the group, the budget of max_restarts={self.max_restarts}: the job failed")
        self.say(f"restart {self.restarts + 1}/{self.max_restarts}: replica {name} exited with {code} (retryable); "
                 "restarting every node, they resume from the last checkpoint")
        self._stop_all()
        for running in self._running.values():
            if len(running.exit_codes) <= running.restarts:  # this start's exit is not recorded yet: the stop's
                running.exit_codes.append(signal_exit_code(running.process.returncode))
        restart_at = time.monotonic() + self.restart_delay_s
        for running in self._running.values():
            running.restarts += 1
            running.restart_at = restart_at

    def _let_workers_finish(self, done: set[str], grace_s: float = 30.0) -> None:
        """The job succeeded with its Master; workers still running get `grace_s` before they are stopped."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(r.process.poll() is None for r in self._running.values()):
            time.sleep(0.2)

    def _stop_all(self) -> None:
        """Like the operator's cleanPodPolicy Running: SIGTERM to every replica still running, SIGKILL after 20 s."""
        for running in self._running.values():
            if running.process.poll() is None:
                tree = process_tree(running.process.pid)
                signal_tree(tree, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running.process.wait(timeout=20)
                signal_tree(tree, signal.SIGKILL)
                running.process.wait()
            running.pump.join(timeout=5)

def run_replicas(job: Any, max_restarts: int, out: TextIO | None = None, timeout_s: float | None = None,
                 extra_env: dict[str, str] | None = None) -> LocalJob:
    """Run every replica to the end (raises JobFailed); returns the finished LocalJob (restart counts)."""
    local = LocalJob(job, max_restarts=max_restarts, out=out, extra_env=extra_env)
    local.run(timeout_s=timeout_s)
    if local.restarts:
        local.say(f"the job succeeded after {local.restarts} restart(s) of the group")
    return local
