"""The pod every node of a job runs, whatever the backend: env, resources, volumes, security, placement.

Both backends render these same pieces (launch.pytorchjob into a PyTorchJob's pod template, launch.trainjob
into a TrainJob's trainer and runtime patch), so that a step runs the same container on a v1 or a v2 cluster.
They are Kubernetes client models; `as_dict` gives the API server's JSON for the trainer-api models.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from launch.spec import RUN_AS_USER, S3_SECRET_KEYS, SHARD_CACHE_PATH, SHARD_CACHE_VOLUME, JobSpec
from trainer.errors import UserError

APP_LABELS = {"app.kubernetes.io/name": "unmix-swav"}
# Istio's sidecar (injected in Kubeflow profile namespaces) keeps a finished pod running and intercepts the ranks'
# traffic: job pods go without it unless `pod_annotations` says otherwise.
ISTIO_SIDECAR_DEFAULT = {"sidecar.istio.io/inject": "false"}
TMP_SIZE = "8Gi"


def as_dict(model: Any) -> Any:
    """A Kubernetes client model (or a list of them) as the API server receives it: camelCase, no nulls."""
    return k8s.ApiClient().sanitize_for_serialization(model)


def env(spec: JobSpec) -> list[k8s.V1EnvVar]:
    """The spec's literal env, then the S3 keys from the Secret (the endpoint optional); without a Secret none:
    the pod's identity (`service_account`) or the node's provides the credentials."""
    variables = [k8s.V1EnvVar(name=name, value=value) for name, value in spec.env().items()]
    if spec.s3_secret_name:
        variables += [
            k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=spec.s3_secret_name, key=key,
                                                       optional=key == "AWS_ENDPOINT_URL")))
            for key in S3_SECRET_KEYS
        ]
    return variables


def resources(spec: JobSpec) -> k8s.V1ResourceRequirements:
    # Limits = requests: the cgroup CPU quota the trainer sizes its loader from is the CPUs asked for.
    amounts: dict[str, str] = {"cpu": str(spec.cpu_per_node), "memory": str(spec.memory_per_node)}
    if spec.gpus_per_node > 0:
        amounts["nvidia.com/gpu"] = str(spec.gpus_per_node)
    return k8s.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def volumes(spec: JobSpec) -> list[k8s.V1Volume]:
    # DataLoader workers share batches through /dev/shm; the container default of 64 MiB is too small.
    # The root filesystem is read-only: /tmp and the shard cache (UNMIX_SHARD_CACHE) are the writable places.
    return [k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                          size_limit=spec.node_shm_size())),
            k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=TMP_SIZE)),
            k8s.V1Volume(name=SHARD_CACHE_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
                size_limit=spec.shard_cache_size))]


def volume_mounts() -> list[k8s.V1VolumeMount]:
    return [k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
            k8s.V1VolumeMount(name=SHARD_CACHE_VOLUME, mount_path=SHARD_CACHE_PATH)]


def container_security_context() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(allow_privilege_escalation=False, read_only_root_filesystem=True,
                                 run_as_non_root=True, capabilities=k8s.V1Capabilities(drop=["ALL"]))


def pod_security_context() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
                                    fs_group=RUN_AS_USER, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"))


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


def tolerations(spec: JobSpec) -> list[k8s.V1Toleration]:
    return [k8s.V1Toleration(**_toleration_kwargs(t)) for t in spec.tolerations]


def pod_labels(spec: JobSpec) -> dict[str, str]:
    return {**APP_LABELS, "app.kubernetes.io/component": spec.command, **spec.labels, **spec.pod_labels}


def pod_annotations(spec: JobSpec) -> dict[str, str]:
    return {**ISTIO_SIDECAR_DEFAULT, **spec.pod_annotations}


def image_pull_secrets(spec: JobSpec) -> list[k8s.V1LocalObjectReference] | None:
    return [k8s.V1LocalObjectReference(name=name) for name in spec.image_pull_secrets] or None
