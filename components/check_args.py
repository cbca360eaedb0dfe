"""Step 2: every distributed step's job checked before any job starts: the JobSpec the launching step will build
(job options included: a bad memory_per_node fails here) and its flags, with the trainer's own checks; and what
each step reads from the data (the splits, a labelled image per class: trainer/data/preflight.py).

A typo in `detr_args` fails the run here, in seconds, instead of after days of pretraining. Things that
exist only later are stood in for: the evaluations are checked without --pretrained (their launching step
checks the real backbone again before it creates its job). One input per pipeline parameter the steps read
(components/steps.py rows, components/jobs.py JOB_OPTIONS; tests/components/test_catalogue.py holds them).
"""

from kfp import dsl

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def check_args(
    images_url: str,
    detection_url: str,
    storage_root: str,
    run_id: str,
    arch: str,
    preset: str,
    config_url: str,
    knn_monitor: bool,
    pretrain_args: list,
    knn_args: list,
    linear_args: list,
    semisup_args: list,
    detr_args: list,
    num_nodes: int,
    gpus_per_node: int,
    linear_num_nodes: int,
    linear_gpus_per_node: int,
    semisup_num_nodes: int,
    semisup_gpus_per_node: int,
    detr_num_nodes: int,
    detr_gpus_per_node: int,
    launcher: str,
    job_backend: str,
    training_runtime: str,
    image: str,
    namespace: str,
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
    gpu_type: str,
):
    """Exits 2 with one line per step whose job or flags the launchers refuse or whose data it cannot run on;
    creates nothing."""
    from components import jobs

    jobs.check_run(locals())
