"""Step 3: SwAV + Un-Mix pretraining as a distributed job (a PyTorchJob or a TrainJob; locally, its replicas).

The step only checks the flags, launches and follows the job; the GPUs belong to the job's pods.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def pretrain(
    images_url: str,
    storage_root: str,
    run_id: str,
    arch: str,
    preset: str,
    config_url: str,
    pretrain_args: list,
    knn_monitor: bool,
    launcher: str,
    job_backend: str,
    training_runtime: str,
    image: str,
    namespace: str,
    num_nodes: int,
    gpus_per_node: int,
    cpu_per_node: str,
    memory_per_node: str,
    shm_size: str,
    node_selector: dict,
    tolerations: list,
    s3_secret_name: str,
    queue: str,
    priority_class: str,
    max_restarts: int,
    service_account: str,
    image_pull_secrets: list,
    pod_labels: dict,
    pod_annotations: dict,
    pending_timeout_minutes: float,
    timeout_hours: float,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("Pretrained", [("run_root", str), ("backbone_url", str), ("dump_url", str)]):
    """`launcher` is `kubernetes` or `local` (this machine, same command, env and restarts); `job_backend` is
    `pytorchjob` (Training Operator v1) or `trainjob` (Kubeflow Trainer v2, on `training_runtime`). The job
    options (components/jobs.py JOB_OPTIONS) are inputs under their JobSpec names."""
    from collections import namedtuple

    from components import jobs
    from components.runtime import log_metrics, read_train_steps, record_url, step_url

    run_root = step_url(storage_root, run_id)
    dump_url = jobs.dump_url(run_root, "pretrain")
    spec = jobs.pretrain_spec(run_root, images_url, arch, preset, config_url, pretrain_args, knn_monitor, launcher,
                              num_nodes, gpus_per_node, jobs.job_options(locals()))
    jobs.launch_step(spec, launcher, timeout_hours)

    last = read_train_steps(dump_url)[-1]
    log_metrics(metrics, {"final_loss": last["loss"], "epochs": last["epoch"] + 1,
                          "images_per_s": last.get("images_per_s", 0.0)}, dump_url)
    backbone_url = step_url(dump_url, "backbone.pth")
    record_url(model, backbone_url, arch=arch, checkpoint=step_url(dump_url, "checkpoint.pth.tar"))
    return namedtuple("Pretrained", ["run_root", "backbone_url", "dump_url"])(run_root, backbone_url, dump_url)
