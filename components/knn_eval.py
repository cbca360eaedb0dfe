"""Step 4: weighted kNN on frozen trunk features (the first signal, in minutes), as a distributed job."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def knn_eval(
    images_url: str,
    backbone_url: str,
    run_root: str,
    arch: str,
    eval_args: list,
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
    timeout_hours: float,
    metrics: Output[Metrics],
) -> NamedTuple("Evaluation", [("metrics_url", str), ("baseline_url", str)]):
    """Launches the job (checked first) and, with `baselines`, its random-init twin; the metrics.json URLs of
    both ("" for no twin). Top-1 / top-5."""
    from collections import namedtuple

    from components import jobs

    metrics_url, baseline_url = jobs.run_evaluation(
        "eval-knn", run_root, backbone_url,
        lambda backbone, dump: jobs.knn_argv(images_url, backbone, dump, arch, eval_args),
        launcher, num_nodes, gpus_per_node, timeout_hours, baselines, image=image, namespace=namespace,
        cpu_per_node=cpu_per_node, memory_per_node=memory_per_node, shm_size=shm_size, node_selector=node_selector,
        tolerations=tolerations, s3_secret_name=s3_secret_name, queue=queue, priority_class=priority_class,
        max_restarts=max_restarts, backend=job_backend,
        training_runtime=training_runtime, metrics=metrics)
    return namedtuple("Evaluation", ["metrics_url", "baseline_url"])(metrics_url, baseline_url)
