"""Step 4b: semi-supervised fine-tuning with 1% or 10% of the labels (run twice), as a distributed job."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def semisup_eval(
    images_url: str,
    backbone_url: str,
    run_root: str,
    arch: str,
    labels_percent: int,
    eval_args: list,
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
    queue: str,
    priority_class: str,
    max_restarts: int,
    timeout_hours: float,
    metrics: Output[Metrics],
) -> str:
    """Launches the job (checked first), then returns the URL of the metrics.json it wrote (top1 / top5)."""
    from components import jobs
    from components.runtime import log_metrics, read_metrics, step_url

    dump_url = jobs.dump_url(run_root, "eval-semisup", labels_percent)
    argv = jobs.semisup_argv(images_url, backbone_url, dump_url, arch, labels_percent, eval_args)
    spec = jobs.job_spec("eval-semisup", dump_url, argv, launcher, num_nodes, gpus_per_node, image=image,
                         namespace=namespace, cpu_per_node=cpu_per_node, memory_per_node=memory_per_node,
                         shm_size=shm_size, node_selector=node_selector, tolerations=tolerations,
                         s3_secret_name=s3_secret_name, queue=queue, priority_class=priority_class,
                         max_restarts=max_restarts)
    jobs.launch_step(spec, launcher, timeout_hours)
    log_metrics(metrics, read_metrics(dump_url), dump_url)
    metrics.metadata["labels_percent"] = labels_percent
    return step_url(dump_url, "metrics.json")
