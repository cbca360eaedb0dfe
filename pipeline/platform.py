"""Kubernetes settings of the pipeline's own pods, through kfp-kubernetes and kfp's task config.

The pipeline's steps are small CPU pods: the GPUs belong to the jobs the launching steps create.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from launch.spec import S3_SECRET_KEYS

# A launching step lost with its node (a drain, a preemption) is retried: the new attempt adopts its job.
LAUNCH_RETRIES = 3
LAUNCH_BACKOFF = "60s"
LAUNCH_BACKOFF_FACTOR = 2.0
LAUNCH_BACKOFF_MAX = "1800s"


def with_s3_secret(task: PipelineTask, secret_name) -> PipelineTask:
    """S3 credentials (and endpoint) as env from a Secret; values never appear in the pipeline."""
    credentials, endpoint = S3_SECRET_KEYS[:2], S3_SECRET_KEYS[2]
    kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env={k: k for k in credentials})
    # Only MinIO-style stores need an endpoint: the key may be absent from the Secret.
    kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env={endpoint: endpoint},
                                 optional=True)
    return task


def on_cpu_node(task: PipelineTask, cpu: str = "1", memory: str = "2Gi") -> PipelineTask:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    return task


def launching(task: PipelineTask, memory: str = "2Gi") -> PipelineTask:
    """A step that launches and follows a job: never cached (it has effects), retried with backoff."""
    task.set_caching_options(enable_caching=False)
    task.set_retry(num_retries=LAUNCH_RETRIES, backoff_duration=LAUNCH_BACKOFF,
                   backoff_factor=LAUNCH_BACKOFF_FACTOR, backoff_max_duration=LAUNCH_BACKOFF_MAX)
    return on_cpu_node(task, memory=memory)
