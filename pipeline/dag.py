"""The pipeline: stage -> check flags and data -> pretrain -> kNN, linear, semi-supervised 1% and 10%, DETR ->
export -> report.

Every distributed step (pretraining and the four evaluations) runs as its own job, sized by its own
parameters (`num_nodes` / `gpus_per_node` for pretraining, `<step>_num_nodes` / `<step>_gpus_per_node` for
the others); the pipeline's own pods are small CPU pods that check, launch and follow those jobs. The
evaluations depend only on pretraining, so they run in parallel on a cluster. The same function runs on
kfp's local SubprocessRunner (`python -m pipeline run-local`) with launcher=local. `job_backend` picks the
job kind: `trainjob` (Kubeflow Trainer v2, the default: TrainJobs on the ClusterTrainingRuntime
`training_runtime`) or `pytorchjob` (clusters that still run the Training Operator v1); nothing else changes.
With `baselines`, every evaluation step also scores a seeded random-init trunk the same way (its twin), so
that every headline number in the report stands beside its baseline and the gain. The export step (a CPU pod)
writes the run's safetensors trunk and classifier, config.json and model card under `<run>/export`; the report
links them.
"""

from kfp import dsl

from components.check_args import check_args
from components.evaluate import evaluate
from components.export import export_model
from components.image import TRAINER_IMAGE
from components.jobs import PIPELINE_PARAMETERS
from components.pretrain import pretrain
from components.report import run_report
from components.runtime import STORAGE_ROOT_PLACEHOLDER
from components.stage_data import stage_data
from components.steps import CHECK_MEMORY, EVALUATION_STEPS, PIPELINE_STEPS, PRETRAIN_STEP, report_parameter
from launch.spec import DEFAULT_GPU_NODE_SELECTOR, DEFAULT_GPU_TOLERATIONS, DEFAULT_S3_SECRET, JobSpec
from pipeline.platform import launching, on_cpu_node, with_s3_secret
from trainer import steps as catalogue

PIPELINE_NAME = "unmix-swav"
JOB = JobSpec(command="pretrain", name="defaults", image=TRAINER_IMAGE)  # the one set of job defaults


@dsl.pipeline(name=PIPELINE_NAME,
              description="SwAV + Un-Mix pretraining, then kNN, linear, semi-supervised and DETR evaluations, each "
                          "a gang-scheduled TrainJob (or PyTorchJob), and a report")
def unmix_swav_pipeline(
    storage_root: str = STORAGE_ROOT_PLACEHOLDER,  # set it: the stage and check steps refuse it
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
    job_backend: str = JOB.job_backend,
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
    s3_secret_name: str = DEFAULT_S3_SECRET,
    queue: str = JOB.queue,
    priority_class: str = JOB.priority_class,
    max_restarts: int = JOB.max_restarts,
    service_account: str = JOB.service_account,
    image_pull_secrets: list = [],  # noqa: B006
    pod_labels: dict = {},  # noqa: B006
    pod_annotations: dict = {},  # noqa: B006
    pending_timeout_minutes: float = JOB.pending_timeout_minutes,
    gpu_type: str = "h100",
    pretrain_timeout_hours: float = 72.0,
    eval_timeout_hours: float = 96.0,
) -> str:
    parameters = dict(locals())  # kfp calls this function with one channel per parameter
    staged = stage_data(data_source=data_source, detection_source=detection_source, storage_root=storage_root,
                        staged_data=staged_data, stage_args=stage_args, detection_options=detection_options)
    # Deterministic: same source, options and storage root -> the same staged location.
    staged.set_display_name("stage data").set_caching_options(enable_caching=True)
    data = {"images": staged.outputs["images_url"], "detection": staged.outputs["detection_url"]}

    # Every launching step (and the check step) gets the launcher and the job options under their JobSpec names.
    job = {"launcher": launcher, **{option: parameters[name] for option, name in PIPELINE_PARAMETERS.items()}}
    flags_and_sizes = {name: parameters[name] for row in PIPELINE_STEPS
                       for name in (row.args, row.num_nodes, row.gpus_per_node)}
    checked = check_args(images_url=data["images"], detection_url=data["detection"], storage_root=storage_root,
                         run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, arch=arch, preset=preset, config_url=config_url,
                         knn_monitor=knn_monitor, gpu_type=gpu_type, **flags_and_sizes, **job)
    checked.set_display_name("check every step's flags and data").set_caching_options(enable_caching=False)

    first = PRETRAIN_STEP
    pretrained = pretrain(images_url=data[first.step.data], storage_root=storage_root,
                          run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, arch=arch, preset=preset, config_url=config_url,
                          pretrain_args=parameters[first.args], knn_monitor=knn_monitor,
                          num_nodes=parameters[first.num_nodes], gpus_per_node=parameters[first.gpus_per_node],
                          timeout_hours=pretrain_timeout_hours, **job).after(checked)
    pretrained.set_display_name(f"{first.step.command} (distributed job)")

    common = {"backbone_url": pretrained.outputs["backbone_url"], "run_root": pretrained.outputs["run_root"],
              "arch": arch, "timeout_hours": eval_timeout_hours, "baselines": baselines, **job}
    evaluations = {}
    for row in EVALUATION_STEPS:
        task = evaluate(command=row.step.command, data_url=data[row.step.data], eval_args=parameters[row.args],
                        labels_percent=row.step.labels_percent or 0, num_nodes=parameters[row.num_nodes],
                        gpus_per_node=parameters[row.gpus_per_node], **common)
        task.set_display_name(f"{row.step.name} (distributed job)")
        launching(task, memory=row.launcher_memory)
        evaluations[row.key] = task
    # After every evaluation: the model card lists their results (it reads their metrics.json itself).
    exported = export_model(run_root=pretrained.outputs["run_root"], backbone_url=pretrained.outputs["backbone_url"],
                            arch=arch, linear_url=evaluations[catalogue.CLASSIFIER_STEP].outputs["metrics_url"])
    exported.after(*evaluations.values()).set_display_name("export").set_caching_options(enable_caching=False)
    summary = run_report(run_root=pretrained.outputs["run_root"],
                         **{report_parameter(first.key): pretrained.outputs["dump_url"]},
                         **{report_parameter(key): task.outputs["metrics_url"] for key, task in evaluations.items()},
                         **{report_parameter(key, baseline=True): task.outputs["baseline_url"]
                            for key, task in evaluations.items()}).after(exported)
    summary.set_display_name("report").set_caching_options(enable_caching=True)

    for task in (staged, checked, pretrained, *evaluations.values(), exported, summary):
        with_s3_secret(task, s3_secret_name)
    for task in (staged, exported, summary):
        on_cpu_node(task)
    on_cpu_node(checked, memory=CHECK_MEMORY)  # it runs every step's checks: the largest launcher's memory
    launching(pretrained, memory=first.launcher_memory)
    return summary.outputs["Output"]
