"""The pipeline: stage -> check flags -> pretrain -> kNN, linear, semi-supervised 1% and 10%, DETR -> report.

Every distributed step (pretraining and the four evaluations) runs as its own job, sized by its own
parameters (`num_nodes` / `gpus_per_node` for pretraining, `<step>_num_nodes` / `<step>_gpus_per_node` for
the others); the pipeline's own pods are small CPU pods that check, launch and follow those jobs. The
evaluations depend only on pretraining, so they run in parallel on a cluster. The same function runs on
kfp's local SubprocessRunner (`python -m pipeline run-local`) with launcher=local. `job_backend` picks the
job kind: `pytorchjob` (Training Operator v1, the default) or `trainjob` (Kubeflow Trainer v2, TrainJobs on the
ClusterTrainingRuntime `training_runtime`); nothing else changes. With `baselines`, every
evaluation step also scores a seeded random-init trunk the same way (its twin), so that every headline
number in the report stands beside its baseline and the gain.
"""

from kfp import dsl

from components.check_args import check_args
from components.evaluate import evaluate
from components.image import TRAINER_IMAGE
from components.pretrain import pretrain
from components.report import run_report
from components.stage_data import stage_data
from launch.spec import DEFAULT_GPU_NODE_SELECTOR, DEFAULT_GPU_TOLERATIONS, JobSpec
from pipeline.platform import launching, on_cpu_node, with_s3_secret

PIPELINE_NAME = "unmix-swav"
JOB = JobSpec(command="pretrain", name="defaults", image=TRAINER_IMAGE)  # the one set of job defaults


@dsl.pipeline(name=PIPELINE_NAME,
              description="SwAV + Un-Mix pretraining, then kNN, linear, semi-supervised and DETR evaluations, each "
                          "a gang-scheduled PyTorchJob or TrainJob, and a report")
def unmix_swav_pipeline(
    storage_root: str = "s3://unmix-swav/runs",
    data_source: str = "builtin:shapes",
    staged_data: str = "",
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
    knn_monitor: bool = False,
    baselines: bool = False,
    knn_args: list = [],  # noqa: B006
    launcher: str = "kubernetes",
    job_backend: str = JOB.backend,
    training_runtime: str = JOB.training_runtime,
    image: str = TRAINER_IMAGE,
    namespace: str = "",
    num_nodes: int = 2,
    gpus_per_node: int = JOB.gpus_per_node,
    linear_num_nodes: int = 1,
    linear_gpus_per_node: int = JOB.gpus_per_node,
    semisup_num_nodes: int = 1,
    semisup_gpus_per_node: int = JOB.gpus_per_node,
    detr_num_nodes: int = 2,
    detr_gpus_per_node: int = JOB.gpus_per_node,
    cpu_per_node: str = JOB.cpu_per_node,
    memory_per_node: str = JOB.memory_per_node,
    shm_size: str = JOB.shm_size,
    gpu_node_selector: dict = DEFAULT_GPU_NODE_SELECTOR,
    gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
    s3_secret_name: str = "unmix-swav-s3",
    queue: str = JOB.queue,
    priority_class: str = JOB.priority_class,
    max_restarts: int = JOB.max_restarts,
    pretrain_timeout_hours: float = 72.0,
    eval_timeout_hours: float = 96.0,
) -> str:
    staged = stage_data(data_source=data_source, detection_source=detection_source, storage_root=storage_root,
                        staged_data=staged_data, stage_args=stage_args, detection_options=detection_options)
    # Deterministic: same source, options and storage root -> the same staged location.
    staged.set_display_name("stage data").set_caching_options(enable_caching=True)
    images_url, detection_url = staged.outputs["images_url"], staged.outputs["detection_url"]

    checked = check_args(
        images_url=images_url, detection_url=detection_url, storage_root=storage_root, arch=arch, preset=preset,
        config_url=config_url, knn_monitor=knn_monitor, pretrain_args=pretrain_args, knn_args=knn_args,
        linear_args=linear_args,
        semisup_args=semisup_args, detr_args=detr_args, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
        linear_num_nodes=linear_num_nodes, linear_gpus_per_node=linear_gpus_per_node,
        semisup_num_nodes=semisup_num_nodes, semisup_gpus_per_node=semisup_gpus_per_node,
        detr_num_nodes=detr_num_nodes, detr_gpus_per_node=detr_gpus_per_node, job_backend=job_backend,
        training_runtime=training_runtime)
    checked.set_display_name("check every step's flags").set_caching_options(enable_caching=False)

    job = {"launcher": launcher, "job_backend": job_backend, "training_runtime": training_runtime, "image": image,
           "namespace": namespace, "cpu_per_node": cpu_per_node,
           "memory_per_node": memory_per_node, "shm_size": shm_size, "node_selector": gpu_node_selector,
           "tolerations": gpu_tolerations, "s3_secret_name": s3_secret_name, "queue": queue,
           "priority_class": priority_class, "max_restarts": max_restarts}
    pretrained = pretrain(images_url=images_url, storage_root=storage_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                          arch=arch, preset=preset, config_url=config_url, pretrain_args=pretrain_args,
                          knn_monitor=knn_monitor, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
                          timeout_hours=pretrain_timeout_hours, **job).after(checked)
    pretrained.set_display_name("pretrain (distributed job)")

    common = {"backbone_url": pretrained.outputs["backbone_url"], "run_root": pretrained.outputs["run_root"],
              "arch": arch, "timeout_hours": eval_timeout_hours, "baselines": baselines, **job}
    # name, title, command, data, flags, labels %, nodes x GPUs per node (kNN runs at the linear step's size)
    plan = [("knn", "kNN evaluation", "eval-knn", images_url, knn_args, 0, linear_num_nodes, linear_gpus_per_node),
            ("linear", "linear evaluation", "eval-linear", images_url, linear_args, 0, linear_num_nodes,
             linear_gpus_per_node),
            *[(f"semisup_{percent}pct", f"semi-supervised {percent}%", "eval-semisup", images_url, semisup_args,
               percent, semisup_num_nodes, semisup_gpus_per_node) for percent in (1, 10)],
            ("detr", "DETR transfer", "detr", detection_url, detr_args, 0, detr_num_nodes, detr_gpus_per_node)]
    evaluations = {}
    for name, title, command, data_url, eval_args, percent, nodes, gpus in plan:
        evaluations[name] = evaluate(command=command, data_url=data_url, eval_args=eval_args, labels_percent=percent,
                                     num_nodes=nodes, gpus_per_node=gpus, **common)
        evaluations[name].set_display_name(f"{title} (distributed job)")
    summary = run_report(run_root=pretrained.outputs["run_root"], pretrain_url=pretrained.outputs["dump_url"],
                         **{f"{name}_url": task.outputs["metrics_url"] for name, task in evaluations.items()},
                         **{f"{name}_random_url": task.outputs["baseline_url"] for name, task in evaluations.items()})
    summary.set_display_name("report").set_caching_options(enable_caching=True)

    for task in (staged, checked, pretrained, *evaluations.values(), summary):
        with_s3_secret(task, s3_secret_name)
    for task in (staged, summary):
        on_cpu_node(task)
    # DETR's checks read the COCO annotations (instances_train2017.json is 450 MB of JSON).
    on_cpu_node(checked, memory="8Gi")
    for task in (pretrained, *(task for name, task in evaluations.items() if name != "detr")):
        launching(task)
    launching(evaluations["detr"], memory="8Gi")  # its launcher reads the COCO annotations again to check them
    return summary.outputs["Output"]
