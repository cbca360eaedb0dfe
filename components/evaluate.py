"""Steps 4-7: an evaluation of the pretrained trunk as a distributed job, beside its random-init twin.

One component for the four kinds, chosen by `command`: `eval-knn` (weighted kNN on frozen features, the first
signal, in minutes), `eval-linear` (a linear classifier on the frozen trunk: top-1 / top-5 and the confusion
matrix), `eval-semisup` (fine-tuning with `labels_percent` % of the labels; the pipeline runs it for 1 and 10)
and `detr` (DETR detection transfer with the trunk as backbone: COCO box AP, `data_url` the COCO-format set).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def evaluate(
    command: str,
    data_url: str,
    backbone_url: str,
    run_root: str,
    arch: str,
    eval_args: list,
    labels_percent: int,
    baselines: bool,
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
    metrics: Output[Metrics],
) -> NamedTuple("Evaluation", [("metrics_url", str), ("baseline_url", str)]):
    """Launches the job (checked first) and, with `baselines`, its random-init twin; the metrics.json URLs of
    both ("" for no twin). `command` and `labels_percent` (0: none) pick the catalogue row (components/steps.py);
    the job options (components/jobs.py JOB_OPTIONS) are inputs under their JobSpec names."""
    from collections import namedtuple

    from components import jobs

    metrics_url, baseline_url = jobs.run_evaluation(
        command, labels_percent, run_root, data_url, backbone_url, arch, eval_args, launcher, num_nodes,
        gpus_per_node, timeout_hours, baselines, metrics, jobs.job_options(locals()))
    return namedtuple("Evaluation", ["metrics_url", "baseline_url"])(metrics_url, baseline_url)
