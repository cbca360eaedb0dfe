"""Step 3b: semi-supervised fine-tuning with 1% or 10% of the labels (the pipeline runs it twice)."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def semisup_eval(images_url: str, backbone_url: str, run_root: str, arch: str, labels_percent: int,
                 eval_args: list, metrics: Output[Metrics]) -> str:
    """Returns the URL of the metrics.json it wrote (top1 / top5)."""
    from components.runtime import log_metrics, read_metrics, run_trainer, step_url

    dump_url = step_url(run_root, f"eval-semisup-{labels_percent}pct")
    run_trainer("eval-semisup", ["--data_path", images_url, "--pretrained", backbone_url,
                                 "--dump_path", dump_url, "--arch", arch,
                                 "--labels_perc", str(labels_percent), *eval_args])
    log_metrics(metrics, read_metrics(dump_url), dump_url)
    metrics.metadata["labels_percent"] = labels_percent
    return step_url(dump_url, "metrics.json")
