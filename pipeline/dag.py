"""The pipeline: stage -> pretrain (PyTorchJob) -> linear, semi-supervised 1% and 10%, DETR -> report.

The evaluations depend only on pretraining, so they run in parallel on a cluster. The same function
runs on kfp's local SubprocessRunner (`python -m pipeline run-local`) with launcher=local.
"""


from kfp import dsl

from components.detr_transfer import detr_transfer
from components.image import TRAINER_IMAGE
from components.linear_eval import linear_eval
from components.pretrain import pretrain
from components.report import report
from components.semisup_eval import semisup_eval
from components.stage_data import stage_data
from pipeline.platform import on_cpu_node, on_gpu_node, with_s3_secret

PIPELINE_NAME = "unmix-swav"
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@dsl.pipeline(name=PIPELINE_NAME,
              description="SwAV + Un-Mix pretraining as a PyTorchJob, then linear, semi-supervised and "
                          "DETR evaluations, and a report")
def unmix_swav_pipeline(
    storage_root: str = "s3://unmix-swav/runs",
    data_source: str = "builtin:shapes",
    detection_source: str = "builtin:shapes-coco",
    arch: str = "resnet50",
    preset: str = "",
    config_url: str = "",
    stage_args: list = [],  # noqa: B006 (kfp reads defaults from the signature)
    detection_options: dict = {},  # noqa: B006
    pretrain_args: list = [],  # noqa: B006
    linear_args: list = [],  # noqa: B006
    semisup_args: list = [],  # noqa: B006
    detr_args: list = [],  # noqa: B006
    launcher: str = "pytorchjob",
    image: str = TRAINER_IMAGE,
    namespace: str = "",
    num_nodes: int = 2,
    gpus_per_node: int = 8,
    cpu_per_node: str = "32",
    memory_per_node: str = "256Gi",
    shm_size: str = "64Gi",
    eval_gpus: int = 1,
    gpu_node_selector: dict = DEFAULT_GPU_NODE_SELECTOR,
    gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
    s3_secret_name: str = "unmix-swav-s3",
    pretrain_timeout_hours: float = 72.0,
) -> str:
    staged = stage_data(data_source=data_source, detection_source=detection_source,
                        storage_root=storage_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        stage_args=stage_args, detection_options=detection_options)
    staged.set_display_name("stage data")

    pretrained = pretrain(
        images_url=staged.outputs["images_url"], run_root=staged.outputs["run_root"], arch=arch,
        preset=preset, config_url=config_url, pretrain_args=pretrain_args, launcher=launcher, image=image,
        namespace=namespace, num_nodes=num_nodes, gpus_per_node=gpus_per_node, cpu_per_node=cpu_per_node,
        memory_per_node=memory_per_node, shm_size=shm_size, node_selector=gpu_node_selector,
        tolerations=gpu_tolerations, s3_secret_name=s3_secret_name, timeout_hours=pretrain_timeout_hours)
    # The step only launches and follows the PyTorchJob; its GPUs belong to the job's pods.
    pretrained.set_display_name("pretrain (PyTorchJob)").set_caching_options(enable_caching=False)

    common = {"backbone_url": pretrained.outputs["backbone_url"], "run_root": staged.outputs["run_root"],
              "arch": arch}
    linear = linear_eval(images_url=staged.outputs["images_url"], eval_args=linear_args, **common)
    linear.set_display_name("linear evaluation")
    semisup_1 = semisup_eval(images_url=staged.outputs["images_url"], labels_percent=1,
                             eval_args=semisup_args, **common)
    semisup_1.set_display_name("semi-supervised 1%")
    semisup_10 = semisup_eval(images_url=staged.outputs["images_url"], labels_percent=10,
                              eval_args=semisup_args, **common)
    semisup_10.set_display_name("semi-supervised 10%")
    detr = detr_transfer(detection_url=staged.outputs["detection_url"], detr_args=detr_args, **common)
    detr.set_display_name("DETR transfer")

    summary = report(run_root=staged.outputs["run_root"], pretrain_dump_url=pretrained.outputs["dump_url"],
                     pretrain_metrics=pretrained.outputs["metrics"], linear_metrics=linear.outputs["metrics"],
                     semisup_1pct_metrics=semisup_1.outputs["metrics"],
                     semisup_10pct_metrics=semisup_10.outputs["metrics"],
                     detr_metrics=detr.outputs["metrics"])
    summary.set_display_name("report")

    for task in (staged, pretrained, linear, semisup_1, semisup_10, detr, summary):
        with_s3_secret(task, s3_secret_name)
    for task in (staged, pretrained, summary):
        on_cpu_node(task)
    for task in (linear, semisup_1, semisup_10, detr):
        on_gpu_node(task, eval_gpus, gpu_node_selector, gpu_tolerations)
    return summary.outputs["Output"]
