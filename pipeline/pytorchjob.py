"""The pretraining PyTorchJob, built with the kubeflow-training SDK's models.

One Master and `num_nodes - 1` Workers, each a pod with one container named `pytorch` that runs
`torchrun`. The Training Operator injects MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and, because
`nprocPerNode` is set, PET_NNODES, PET_NODE_RANK and PET_NPROC_PER_NODE; torchrun reads the PET_*
ones by itself, the master address and port are passed with Kubernetes' $(VAR) expansion.
Preemption: restartPolicy OnFailure restarts the pod, and the trainer resumes from the checkpoint in
its --dump_path on object storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kubeflow.training import models
from kubernetes import client as k8s

from trainer.errors import UserError

CONTAINER_NAME = "pytorch"  # the operator finds the training container (and its port) by this name
PORT_NAME = "pytorchjob-port"
PORT = 23456
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
RUN_AS_USER = 10001  # high UID: no clash with host users (checkov CKV_K8S_40); the image's user
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class PretrainJobSpec:
    name: str
    image: str
    trainer_args: list[str]
    namespace: str = "default"
    num_nodes: int = 1
    gpus_per_node: int = 1
    cpu_per_node: str = "8"
    memory_per_node: str = "64Gi"
    shm_size: str = "16Gi"
    s3_secret_name: str = ""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    backoff_limit: int = 10
    ttl_seconds_after_finished: int = 7 * 24 * 3600
    clean_pod_policy: str = "Running"
    labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        # Pods are named <job>-master-0 / <job>-worker-N and get a Service each: keep room for that.
        if len(self.name) > 45 or not _DNS_1035.match(self.name):
            raise UserError(f"PyTorchJob name {self.name!r} is not a DNS-1035 label of at most 45 "
                            "characters; use lowercase letters, digits and '-', starting with a letter")
        if self.num_nodes < 1:
            raise UserError(f"num_nodes is {self.num_nodes}; a PyTorchJob needs at least 1 node")
        if self.gpus_per_node < 0:
            raise UserError(f"gpus_per_node is {self.gpus_per_node}; use 0 for CPU nodes or a positive count")


def nproc_per_node(spec: PretrainJobSpec) -> int:
    """One process per GPU; one process on a CPU-only node."""
    return max(spec.gpus_per_node, 1)


def container_command(trainer_args: list[str]) -> list[str]:
    """torchrun takes nnodes, node_rank and nproc_per_node from PET_*; master from the operator's env."""
    return ["torchrun", "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)",
            "-m", "trainer", "pretrain", *trainer_args]


def _env(spec: PretrainJobSpec) -> list[k8s.V1EnvVar]:
    env = [
        # Read-only root filesystem: everything that wants a home or a cache goes to the /tmp volume.
        k8s.V1EnvVar(name="HOME", value="/tmp"),
        k8s.V1EnvVar(name="OMP_NUM_THREADS", value="4"),
        # The run lock's job identity: a pod the operator restarts takes over its own job's lock at once.
        k8s.V1EnvVar(name="UNMIX_RUN_ID", value=spec.name),
    ]
    if spec.s3_secret_name:
        env += [
            k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=spec.s3_secret_name, key=key,
                                                       optional=key == "AWS_ENDPOINT_URL")))
            for key in S3_SECRET_KEYS
        ]
    return env


def _resources(spec: PretrainJobSpec) -> k8s.V1ResourceRequirements:
    amounts: dict[str, str] = {"cpu": spec.cpu_per_node, "memory": spec.memory_per_node}
    if spec.gpus_per_node > 0:
        amounts["nvidia.com/gpu"] = str(spec.gpus_per_node)
    return k8s.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def _pod_template(spec: PretrainJobSpec) -> k8s.V1PodTemplateSpec:
    command = container_command(spec.trainer_args)
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=spec.image,
        image_pull_policy="IfNotPresent",
        command=command[:1],
        args=command[1:],
        env=_env(spec),
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=PORT, protocol="TCP")],
        resources=_resources(spec),
        volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
                       k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"])),
    )
    pod_spec = k8s.V1PodSpec(
        containers=[container],
        # DataLoader workers share batches through /dev/shm; the container default of 64 MiB is too small.
        volumes=[k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                              size_limit=spec.shm_size)),
                 k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="8Gi"))],
        node_selector=dict(spec.node_selector) or None,
        tolerations=[k8s.V1Toleration(**_toleration_kwargs(t)) for t in spec.tolerations] or None,
        automount_service_account_token=False,  # training never talks to the Kubernetes API
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, fs_group=RUN_AS_USER,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
    )
    return k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels={"app.kubernetes.io/name": "unmix-swav",
                                                                   "app.kubernetes.io/component": "pretrain",
                                                                   **spec.labels}),
                                 spec=pod_spec)


def _toleration_kwargs(toleration: dict[str, Any]) -> dict[str, Any]:
    """Accept Kubernetes' camelCase keys (as users write them) and kfp-kubernetes' snake_case."""
    renamed = {"tolerationSeconds": "toleration_seconds"}
    allowed = {"key", "operator", "value", "effect", "toleration_seconds"}
    kwargs = {renamed.get(key, key): value for key, value in toleration.items()}
    unknown = set(kwargs) - allowed
    if unknown:
        raise UserError(f"toleration {toleration} has unknown keys {sorted(unknown)}; "
                        "use key, operator, value, effect, tolerationSeconds")
    return kwargs


def build_pytorchjob(spec: PretrainJobSpec) -> models.KubeflowOrgV1PyTorchJob:
    spec.validate()
    template = _pod_template(spec)
    replicas = {"Master": models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure",
                                                          template=template)}
    if spec.num_nodes > 1:
        replicas["Worker"] = models.KubeflowOrgV1ReplicaSpec(replicas=spec.num_nodes - 1,
                                                             restart_policy="OnFailure", template=template)
    return models.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1",
        kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(name=spec.name, namespace=spec.namespace,
                                  labels={"app.kubernetes.io/name": "unmix-swav", **spec.labels}),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(nproc_per_node(spec)),
            pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(
                backoff_limit=spec.backoff_limit,
                clean_pod_policy=spec.clean_pod_policy,
                ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
            ),
        ),
    )


def to_manifest(job: models.KubeflowOrgV1PyTorchJob) -> dict[str, Any]:
    """The job as the API server receives it (camelCase JSON, no nulls)."""
    return k8s.ApiClient().sanitize_for_serialization(job)
