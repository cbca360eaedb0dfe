"""Step 3a: linear evaluation on the frozen pretrained trunk."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def linear_eval(images_url: str, backbone_url: str, run_root: str, arch: str, eval_args: list,
                metrics: Output[Metrics]) -> str:
    """Returns the URL of the metrics.json it wrote (top1 / top5)."""
    from components.runtime import log_metrics, read_metrics, run_trainer, step_url

    dump_url = step_url(run_root, "eval-linear")
    run_trainer("eval-linear", ["--data_path", images_url, "--pretrained", backbone_url,
                                "--dump_path", dump_url, "--arch", arch, *eval_args])
    log_metrics(metrics, read_metrics(dump_url), dump_url)
    return step_url(dump_url, "metrics.json")
