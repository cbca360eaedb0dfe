"""Step 2: every distributed step's flags checked with the trainer's own checks, before any job starts.

A typo in `detr_args` fails the run here, in seconds, instead of after days of pretraining. Things that
exist only later are stood in for: the evaluations are checked without --pretrained (their launching step
checks the real backbone again before it creates its job).
"""

from kfp import dsl

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def check_args(
    images_url: str,
    detection_url: str,
    storage_root: str,
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
    job_backend: str,
    training_runtime: str,
):
    """Exits 2 with one line per step whose flags the trainer refuses."""
    from components import jobs

    root = f"{storage_root.rstrip('/')}/flag-check"  # never written: the checks do no work

    def spec(command, argv, nodes, gpus):
        return jobs.job_spec(command, jobs.dump_url(root, command, 1), argv, "local", nodes, gpus, image="check",
                             backend=job_backend, training_runtime=training_runtime)

    def evaluation(command, data_url, backbone, extra, nodes, gpus, labels_percent=None):
        return spec(command, jobs.evaluation_argv(command, data_url, backbone, root, arch, extra, labels_percent),
                    nodes, gpus)

    jobs.check_steps([
        ("pretraining", spec("pretrain", jobs.pretrain_argv(images_url, root, arch, preset, config_url,
                                                            pretrain_args, knn_monitor), num_nodes, gpus_per_node)),
        ("kNN evaluation", evaluation("eval-knn", images_url, "", knn_args, linear_num_nodes, linear_gpus_per_node)),
        ("linear evaluation", evaluation("eval-linear", images_url, "", linear_args, linear_num_nodes,
                                         linear_gpus_per_node)),
        *[(f"semi-supervised {percent}%", evaluation("eval-semisup", images_url, "", semisup_args, semisup_num_nodes,
                                                     semisup_gpus_per_node, percent)) for percent in (1, 10)],
        ("DETR transfer", evaluation("detr", detection_url, "random", detr_args, detr_num_nodes, detr_gpus_per_node)),
    ])
