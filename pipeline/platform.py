"""Kubernetes settings of the pipeline's own pods, through kfp-kubernetes and kfp's task config."""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from pipeline.pytorchjob import S3_SECRET_KEYS

SHM_VOLUME = "dshm"


def with_s3_secret(task: PipelineTask, secret_name) -> PipelineTask:
    """S3 credentials (and endpoint) as env from a Secret; values never appear in the pipeline."""
    credentials, endpoint = S3_SECRET_KEYS[:2], S3_SECRET_KEYS[2]
    kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env={k: k for k in credentials})
    # Only MinIO-style stores need an endpoint: the key may be absent from the Secret.
    kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env={endpoint: endpoint},
                                 optional=True)
    return task


def on_gpu_node(task: PipelineTask, gpus, node_selector, tolerations, shm_size: str = "8Gi") -> PipelineTask:
    """GPU request, the GPU node pool's selector and tolerations, and a memory-backed /dev/shm."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    task.set_cpu_request("4").set_memory_request("16Gi").set_memory_limit("48Gi")
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                               size_limit=shm_size)
    return task


def on_cpu_node(task: PipelineTask, cpu: str = "1", memory: str = "2Gi") -> PipelineTask:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    return task
