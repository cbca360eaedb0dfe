"""Step 2: SwAV + Un-Mix pretraining as a PyTorchJob (or, locally, its replicas run with torchrun)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def pretrain(
    images_url: str,
    run_root: str,
    arch: str,
    preset: str,
    config_url: str,
    pretrain_args: list,
    launcher: str,
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
    timeout_hours: float,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("Pretrained", [("backbone_url", str), ("dump_url", str)]):
    """`launcher` is `pytorchjob` (Kubernetes) or `local` (this machine, same command and env)."""
    from collections import namedtuple

    from components.runtime import log_metrics, read_train_steps, record_url, step_url
    from pipeline.pretrain_launch import PretrainRequest, launch_pretraining

    dump_url = step_url(run_root, "pretrain")
    request = PretrainRequest(
        images_url=images_url, dump_url=dump_url, arch=arch, preset=preset, config_url=config_url,
        extra_args=[str(arg) for arg in pretrain_args], image=image, namespace=namespace,
        num_nodes=num_nodes, gpus_per_node=gpus_per_node, cpu_per_node=cpu_per_node,
        memory_per_node=memory_per_node, shm_size=shm_size, node_selector=node_selector,
        tolerations=tolerations, s3_secret_name=s3_secret_name, timeout_s=timeout_hours * 3600)
    launch_pretraining(request, launcher)

    records = read_train_steps(dump_url)
    last = records[-1]
    log_metrics(metrics, {"final_loss": last["loss"], "epochs": last["epoch"] + 1,
                          "images_per_s": last.get("images_per_s", 0.0)}, dump_url)
    backbone_url = step_url(dump_url, "backbone.pth")
    record_url(model, backbone_url, arch=arch, checkpoint=step_url(dump_url, "checkpoint.pth.tar"))
    return namedtuple("Pretrained", ["backbone_url", "dump_url"])(backbone_url, dump_url)
