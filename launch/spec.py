"""One typed spec for a distributed trainer command, whatever runs it.

`JobSpec` says what to run (a trainer command and its flags) and on what (nodes x GPUs, per-node CPU,
memory and /dev/shm, the local shard cache, placement, queue, priority, restart budget), and which backend
renders it. It holds no Kubernetes or Kubeflow type: `trainjob` (the default: launch.trainjob, a TrainJob for
Kubeflow Trainer v2 on the ClusterTrainingRuntime `training_runtime`) or `pytorchjob` (launch.pytorchjob, a
PyTorchJob for clusters that still run the Training Operator v1); the local harness runs either one's
replicas here. Its field defaults are the ONLY defaults: the pipeline's parameters and
`python -m pipeline job-manifest` read them.

Every node runs `node_command(...)`: torchrun through launch.torchrun, which exits with the trainer's own
exit code, so that the Training Operator's ExitCode restart policy can tell a permanent failure (1-127: a
bad flag, exit 2) from a retryable one (128-255: 138 store down or a rank lost, 143 preempted); Trainer v2's
runtime (k8s/trainer-v2) draws the same line with a pod failure policy.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from launch import k8s_names
from trainer.errors import UserError
from trainer.steps import STEPS

# The trainer commands that run as one distributed job (torchrun on every node): the step catalogue's.
COMMANDS = tuple(dict.fromkeys(row.command for row in STEPS))
BACKENDS = ("pytorchjob", "trainjob")  # Training Operator v1 PyTorchJob, Kubeflow Trainer v2 TrainJob
DEFAULT_TRAINING_RUNTIME = "unmix-swav-torch"  # k8s/trainer-v2/cluster/runtime.yaml: torch, exit-code restarts
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
DEFAULT_S3_SECRET = "unmix-swav-s3"  # k8s/s3-secret.template.yaml: the pipeline's and job-manifest's default
RUN_AS_USER = 10001  # high UID: no clash with host users (checkov CKV_K8S_40); the image's user
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MIB, GIB = 2**20, 2**30
# The shard cache (trainer.data.streaming): an emptyDir on the node's disk, the one writable place for it under
# the read-only root; the trainer's cap is this share of the volume's sizeLimit, so that the cache evicts its
# own shards before the kubelet evicts the pod for going over the limit.
SHARD_CACHE_VOLUME = "shard-cache"
SHARD_CACHE_PATH = "/var/cache/unmix-shards"
SHARD_CACHE_CAP_FRACTION = 0.9


def quantity(text: str, option: str = "quantity") -> float:
    """A Kubernetes quantity as a number: bytes for memory, CPUs for cpu (launch.k8s_names' grammar)."""
    return k8s_names.quantity(option, text)


def _binary(size_bytes: int) -> str:
    """Bytes as a quantity in whole Gi, else whole Mi (rounded down)."""
    return f"{size_bytes // GIB}Gi" if size_bytes % GIB == 0 else f"{size_bytes // MIB}Mi"


@dataclass(frozen=True)
class JobSpec:
    command: str  # one of COMMANDS
    name: str  # the job's name; also UNMIX_RUN_ID, so that a restarted pod takes over its own run lock
    image: str
    trainer_args: tuple[str, ...] = ()
    namespace: str = "default"
    num_nodes: int = 1
    gpus_per_node: int = 8  # 0: CPU nodes, one process each
    cpu_per_node: str = "32"
    memory_per_node: str = "256Gi"
    shm_size: str = ""  # memory-backed /dev/shm; "": sized for the node by trainer.run.resources (node_shm_size)
    shard_cache_size: str = "50Gi"  # sizeLimit of the shard cache's emptyDir; the trainer caps the cache at 90%
    s3_secret_name: str = ""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    queue: str = ""  # Kueue LocalQueue (label) and the gang scheduler's queue (schedulingPolicy.queue)
    priority_class: str = ""  # PriorityClass of the pods and of the gang
    max_restarts: int = 3  # restarts of the whole group after retryable failures, then the job fails
    ttl_seconds_after_finished: int = 7 * 24 * 3600
    labels: dict[str, str] = field(default_factory=dict)
    job_backend: str = "trainjob"  # one of BACKENDS: Kubeflow Trainer v2 by default; pytorchjob for v1 clusters
    training_runtime: str = DEFAULT_TRAINING_RUNTIME  # the ClusterTrainingRuntime a TrainJob references
    # The job pods' ServiceAccount; with no s3_secret_name, S3 credentials come from its identity (IRSA, GKE
    # workload identity: the account's annotation names the cloud role), and no Secret is mounted.
    service_account: str = ""
    image_pull_secrets: list[str] = field(default_factory=list)  # Secrets of type dockerconfigjson
    pod_labels: dict[str, str] = field(default_factory=dict)  # on every job pod, over ours
    pod_annotations: dict[str, str] = field(default_factory=dict)  # over ISTIO_SIDECAR_DEFAULT (launch.pod)
    # How long the launcher lets the job's pods stay unschedulable once admitted (a queue's wait is not counted)
    # before it ends the step with the scheduler's last message (launch.pending).
    pending_timeout_minutes: float = 30.0

    @property
    def nproc_per_node(self) -> int:
        """One process per GPU; one process on a CPU-only node."""
        return max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.nproc_per_node

    def validate(self) -> None:
        # Pods are named <job>-master-0 / <job>-worker-N (v1) or <job>-node-0-N-xxxxx (v2, whose Job is named
        # <job>-node-0, a label value of at most 63 characters) and get Services: keep room for that.
        if len(self.name) > 45 or not _DNS_1035.match(self.name):
            raise UserError(f"job name {self.name!r} is not a DNS-1035 label of at most 45 characters; use "
                            "lowercase letters, digits and '-', starting with a letter")
        if self.command not in COMMANDS:
            raise UserError(f"{self.command!r} does not run as a distributed job; use one of {', '.join(COMMANDS)}")
        if self.job_backend not in BACKENDS:
            raise UserError(f"job backend {self.job_backend!r} is not known; use pytorchjob (Training Operator v1) or "
                            "trainjob (Kubeflow Trainer v2)")
        if self.num_nodes < 1:
            raise UserError(f"num_nodes is {self.num_nodes}; a job needs at least 1 node")
        if self.gpus_per_node < 0:
            raise UserError(f"gpus_per_node is {self.gpus_per_node}; use 0 for CPU nodes or a positive count")
        if self.max_restarts < 0:
            raise UserError(f"max_restarts is {self.max_restarts}; use 0 (no restart) or more")
        k8s_names.check_seconds("pending_timeout_minutes (as seconds)", self.pending_timeout_minutes * 60)
        self._validate_cluster_values()
        if quantity(self.shard_cache_size) < MIB:
            raise UserError(f"shard_cache_size {self.shard_cache_size!r} is too small for a shard cache; e.g. 50Gi")
        # /dev/shm is memory and counts against the pod's memory limit: it must leave room for the processes.
        if self.shm_size and quantity(self.shm_size) >= quantity(self.memory_per_node):
            raise UserError(f"shm_size {self.shm_size} is not below memory_per_node {self.memory_per_node}; "
                            "/dev/shm counts against the pod's memory (leave shm_size empty to size it for the node)")

    def _validate_cluster_values(self) -> None:
        """Every value the API server, Kueue or the runtime would refuse at creation, refused here instead."""
        k8s_names.check_image("image", self.image)
        if self.namespace:  # empty: the launcher's own namespace
            k8s_names.check_dns_label("namespace", self.namespace)
        if self.job_backend == "trainjob" and not k8s_names.is_dns_subdomain(self.training_runtime):
            raise UserError(f"training_runtime {self.training_runtime!r} is not a ClusterTrainingRuntime name; e.g. "
                            f"{DEFAULT_TRAINING_RUNTIME} (k8s/trainer-v2) or torch-distributed")
        # The queue and the priority class are also label values (kueue.x-k8s.io/...): at most 63 characters.
        if self.queue:
            k8s_names.check_dns_subdomain("queue", self.queue, k8s_names.LABEL_MAX)
        if self.priority_class:
            k8s_names.check_dns_subdomain("priority_class", self.priority_class, k8s_names.LABEL_MAX)
        if self.s3_secret_name:
            k8s_names.check_dns_subdomain("s3_secret_name", self.s3_secret_name)
        if self.service_account:
            k8s_names.check_dns_subdomain("service_account", self.service_account)
        if not isinstance(self.image_pull_secrets, list | tuple):
            raise UserError(f"image_pull_secrets {self.image_pull_secrets!r} is not valid: use a list of Secret "
                            "names, e.g. [\"regcred\"]")
        for number, secret in enumerate(self.image_pull_secrets):
            k8s_names.check_dns_subdomain(f"image_pull_secrets[{number}]", secret)
        k8s_names.check_labels("labels", self.labels)
        k8s_names.check_labels("pod_labels", self.pod_labels)
        k8s_names.check_annotations("pod_annotations", self.pod_annotations)
        k8s_names.check_labels("node_selector", self.node_selector)
        for number, toleration in enumerate(self.tolerations):
            k8s_names.check_toleration(f"tolerations[{number}]", toleration)
        for what, value in (("cpu_per_node", self.cpu_per_node), ("memory_per_node", self.memory_per_node),
                            ("shard_cache_size", self.shard_cache_size)):
            k8s_names.check_positive_quantity(what, value)
        if self.shm_size:
            k8s_names.quantity("shm_size", self.shm_size)
        if isinstance(self.ttl_seconds_after_finished, bool) or not isinstance(self.ttl_seconds_after_finished, int) \
                or not 0 <= self.ttl_seconds_after_finished <= k8s_names.INT32_MAX:
            raise UserError(f"ttl_seconds_after_finished {self.ttl_seconds_after_finished!r} is not valid: use whole "
                            f"seconds from 0 to {k8s_names.INT32_MAX}")

    @property
    def node_cpus(self) -> int:
        """Whole CPUs of the pod's limit (= its request), as the trainer reads the cgroup quota."""
        return max(1, math.floor(quantity(self.cpu_per_node)))

    def node_sizing(self) -> dict[str, Any]:
        """trainer.run.resources.pod_sizing for this node: threads, loader workers, /dev/shm, memory estimate."""
        from trainer.run.resources import pod_sizing

        return pod_sizing(self.node_cpus, self.gpus_per_node, memory=int(quantity(self.memory_per_node)))

    def node_shm_size(self) -> str:
        """/dev/shm of every node: `shm_size` when given; else pod_sizing's (2 x the crops the loader workers
        keep in flight), at most half the memory limit (it counts against it)."""
        if self.shm_size:
            return str(self.shm_size)
        sizing = self.node_sizing()
        return _binary(min(sizing["shm_bytes"], int(quantity(self.memory_per_node)) // 2))

    def shard_cache_gb(self) -> str:
        """UNMIX_SHARD_CACHE_GB (GiB, as the trainer reads it): 90% of the volume's sizeLimit, to 0.1 below."""
        tenths = int(quantity(self.shard_cache_size)) * round(SHARD_CACHE_CAP_FRACTION * 10) // GIB
        return f"{tenths / 10:g}"

    def env(self) -> dict[str, str]:
        """The literal environment of every node (secrets come on top, per backend)."""
        # Read-only root filesystem: everything that wants a home or a cache goes to the /tmp volume.
        env = {"HOME": "/tmp"}
        if self.gpus_per_node > 0:
            # One intra-op thread per rank, the other CPUs are loader workers (trainer.run.resources); CPU nodes
            # leave the threads to torch (training runs in the main process there).
            env.update(self.node_sizing()["env"])
        # Whole shards from remote storage are cached on the node's disk, in the shard-cache volume.
        env["UNMIX_SHARD_CACHE"] = SHARD_CACHE_PATH
        env["UNMIX_SHARD_CACHE_GB"] = self.shard_cache_gb()
        # The run lock's job identity: a pod the operator restarts takes over its own job's lock at once.
        env["UNMIX_RUN_ID"] = self.name
        return env

    def node_command(self, rendezvous_args: list[str]) -> list[str]:
        """What every node runs: torchrun (no restarts of its own) under launch.torchrun, which exits with the
        trainer's exit code. `rendezvous_args` are the backend's (how a node finds the master), the only live
        `$(VAR)` references: the kubelet would expand one in a trainer flag too (a path holding
        `$(AWS_SECRET_ACCESS_KEY)` would put the secret into argv), so the flags are escaped."""
        return ["python", "-m", "launch.torchrun", *rendezvous_args, "--max-restarts=0",
                "-m", "trainer", self.command, *map(k8s_names.escape_vars, self.trainer_args)]


def job_name(command: str, dump_url: str) -> str:
    """Derived from the command and its output location: a retried step finds (and follows) its own job."""
    return f"unmix-{command}-" + hashlib.sha256(dump_url.encode("utf-8")).hexdigest()[:12]


def flag_value(args: list[str] | tuple[str, ...], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in `args` (the last one wins, as argparse does)."""
    found = None
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            found = args[index + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def default_placement(gpus_per_node: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Node selector and tolerations of the GPU node pool for GPU jobs; none for CPU jobs."""
    if gpus_per_node > 0:
        return dict(DEFAULT_GPU_NODE_SELECTOR), [dict(t) for t in DEFAULT_GPU_TOLERATIONS]
    return {}, []
