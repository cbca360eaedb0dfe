"""A JobSpec rendered as a PyTorchJob (Training Operator v1, `kubeflow.org/v1`), with the SDK's models.

One Master and `num_nodes - 1` Workers, each a pod with one container named `pytorch`. The operator injects
MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and, because `nprocPerNode` is set, PET_NNODES, PET_NODE_RANK
and PET_NPROC_PER_NODE; torchrun reads the PET_* ones by itself, the master address and port are passed
with Kubernetes' $(VAR) expansion.

Restarts: `restartPolicy: ExitCode` on every replica. The operator then runs the pods with restartPolicy
Never and, when a pod fails, fails the job at once for exit codes 1-127 and deletes and recreates the pod
for 128-255 (kubeflow/training-operator v1.9, pkg/controller.v1/common/pod.go, IsRetryableExitCode). The
other ranks lose their peer, exit 138, and are recreated too: the whole group restarts and resumes from
the checkpoint in --dump_path. The operator does not bound those restarts (its backoffLimit counts container
restarts, which pods with restartPolicy Never never have: kubeflow/trainer#2045), so the launcher counts
them and ends the job after `max_restarts` (launch.kube); backoffLimit is set to the same number anyway.

Gang scheduling: `schedulingPolicy.minAvailable` = every replica, with the queue and priority class; the
operator turns it into a PodGroup when it runs with a gang scheduler (Volcano or the scheduler-plugins
coscheduling plugin). Kueue: the `kueue.x-k8s.io/queue-name` label when a queue is named; Kueue suspends
the job until its LocalQueue admits all of it.
"""

from __future__ import annotations

from typing import Any

from kubeflow.training import models
from kubernetes import client as k8s

from launch.spec import KUEUE_QUEUE_LABEL, RUN_AS_USER, S3_SECRET_KEYS, SHARD_CACHE_PATH, SHARD_CACHE_VOLUME, JobSpec
from trainer.errors import UserError

CONTAINER_NAME = "pytorch"  # the operator finds the training container (and its port) by this name
PORT_NAME = "pytorchjob-port"
PORT = 23456
RESTART_POLICY = "ExitCode"
RENDEZVOUS_ARGS = ["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"]
APP_LABELS = {"app.kubernetes.io/name": "unmix-swav"}


def _env(spec: JobSpec) -> list[k8s.V1EnvVar]:
    env = [k8s.V1EnvVar(name=name, value=value) for name, value in spec.env().items()]
    if spec.s3_secret_name:
        env += [
            k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=spec.s3_secret_name, key=key,
                                                       optional=key == "AWS_ENDPOINT_URL")))
            for key in S3_SECRET_KEYS
        ]
    return env


def _resources(spec: JobSpec) -> k8s.V1ResourceRequirements:
    # Limits = requests: the cgroup CPU quota the trainer sizes its loader from is the CPUs asked for.
    amounts: dict[str, str] = {"cpu": str(spec.cpu_per_node), "memory": str(spec.memory_per_node)}
    if spec.gpus_per_node > 0:
        amounts["nvidia.com/gpu"] = str(spec.gpus_per_node)
    return k8s.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


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


def _pod_template(spec: JobSpec) -> k8s.V1PodTemplateSpec:
    command = spec.node_command(RENDEZVOUS_ARGS)
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
                       k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
                       k8s.V1VolumeMount(name=SHARD_CACHE_VOLUME, mount_path=SHARD_CACHE_PATH)],
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"])),
    )
    pod_spec = k8s.V1PodSpec(
        containers=[container],
        # DataLoader workers share batches through /dev/shm; the container default of 64 MiB is too small.
        # The root filesystem is read-only: /tmp and the shard cache (UNMIX_SHARD_CACHE) are the writable places.
        volumes=[k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
                     medium="Memory", size_limit=spec.node_shm_size())),
                 k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="8Gi")),
                 k8s.V1Volume(name=SHARD_CACHE_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
                     size_limit=spec.shard_cache_size))],
        node_selector=dict(spec.node_selector) or None,
        tolerations=[k8s.V1Toleration(**_toleration_kwargs(t)) for t in spec.tolerations] or None,
        priority_class_name=spec.priority_class or None,
        automount_service_account_token=False,  # training never talks to the Kubernetes API
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, fs_group=RUN_AS_USER,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
    )
    labels = {**APP_LABELS, "app.kubernetes.io/component": spec.command, **spec.labels}
    return k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod_spec)


def build_pytorchjob(spec: JobSpec) -> models.KubeflowOrgV1PyTorchJob:
    spec.validate()
    template = _pod_template(spec)
    replicas = {"Master": models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy=RESTART_POLICY,
                                                          template=template)}
    if spec.num_nodes > 1:
        replicas["Worker"] = models.KubeflowOrgV1ReplicaSpec(replicas=spec.num_nodes - 1,
                                                             restart_policy=RESTART_POLICY, template=template)
    labels = {**APP_LABELS, **spec.labels}
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    return models.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1",
        kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(name=spec.name, namespace=spec.namespace or None, labels=labels),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.nproc_per_node),
            pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(
                backoff_limit=spec.max_restarts,
                clean_pod_policy="Running",
                ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
                scheduling_policy=models.KubeflowOrgV1SchedulingPolicy(
                    min_available=spec.num_nodes, queue=spec.queue or None,
                    priority_class=spec.priority_class or None),
            ),
        ),
    )


def to_manifest(job: models.KubeflowOrgV1PyTorchJob) -> dict[str, Any]:
    """The job as the API server receives it (camelCase JSON, no nulls)."""
    return k8s.ApiClient().sanitize_for_serialization(job)
