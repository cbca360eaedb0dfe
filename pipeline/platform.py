"""Kubernetes settings of the pipeline's own pods, through kfp-kubernetes and kfp's task config.

The pipeline's steps are small CPU pods: the GPUs belong to the jobs the launching steps create.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.graph_component import GraphComponent

from launch.spec import S3_SECRET_KEYS

# A launching step lost with its node (a drain, a preemption) is retried: the new attempt adopts its job. The
# backoff is short because a retry of a permanent failure fails in seconds but kfp still sleeps before it (set_retry
# cannot skip exit codes): a failed run ends after 15 + 30 + 60 s of sleeps, not 60 + 120 + 240.
LAUNCH_RETRIES = 3
LAUNCH_BACKOFF = "15s"
LAUNCH_BACKOFF_FACTOR = 2.0
LAUNCH_BACKOFF_MAX = "1800s"
# How the pipeline's own pods get S3 access, chosen at compile time: a Secret, or the run's service account.
S3_CREDENTIALS = ("secret", "pod-identity")


def with_s3_secret(task: PipelineTask, secret_name) -> PipelineTask:
    """S3 credentials (and endpoint) as env from a Secret; values never appear in the pipeline."""
    credentials, endpoint = S3_SECRET_KEYS[:2], S3_SECRET_KEYS[2]
    kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env={k: k for k in credentials})
    # Only MinIO-style stores need an endpoint: the key may be absent from the Secret.
    kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env={endpoint: endpoint},
                                 optional=True)
    return task


def for_cluster(pipeline: GraphComponent, s3_credentials: str = "secret",
                image_pull_secrets: Sequence[str] = ()) -> GraphComponent:
    """A copy with the steps' pod settings that a pod spec must hold before the run starts (kfp-kubernetes reads
    them from the compiled platform spec; an empty Secret name is invalid, so they cannot be run-time choices):
    `pod-identity` drops the S3 Secret from every step (S3 access from the run's service account: IRSA, GKE
    Workload Identity); `image_pull_secrets` lets every step's pod pull the trainer image from a private registry."""
    copied = copy.deepcopy(pipeline)
    platforms = copied.platform_spec.platforms
    executors = platforms["kubernetes"].deployment_spec.executors
    pull = [{"secretName": name, "secretNameParameter": {"runtimeValue": {"constant": name}}}
            for name in image_pull_secrets]  # what kubernetes.set_image_pull_secrets writes for a constant
    for name in copied.pipeline_spec.deployment_spec["executors"]:
        executor = executors[name]
        if s3_credentials == "pod-identity" and "secretAsEnv" in executor:
            del executor["secretAsEnv"]
        if pull:
            executor["imagePullSecret"] = pull
        if not executor:
            del executors[name]
    if not executors:
        del platforms["kubernetes"]
    return copied


def mounts_s3_secret(platform_document: dict | None) -> bool:
    """Whether a compiled package's Kubernetes platform spec (its second YAML document) mounts a Secret."""
    executors = (((platform_document or {}).get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec", {})
    return any("secretAsEnv" in executor for executor in (executors.get("executors") or {}).values())


def on_cpu_node(task: PipelineTask, cpu: str = "1", memory: str = "2Gi") -> PipelineTask:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    return task


def launching(task: PipelineTask, memory: str = "2Gi") -> PipelineTask:
    """A step that launches and follows a job: never cached (it has effects), retried with backoff."""
    task.set_caching_options(enable_caching=False)
    task.set_retry(num_retries=LAUNCH_RETRIES, backoff_duration=LAUNCH_BACKOFF,
                   backoff_factor=LAUNCH_BACKOFF_FACTOR, backoff_max_duration=LAUNCH_BACKOFF_MAX)
    return on_cpu_node(task, memory=memory)
