"""Step 3c: DETR detection transfer with the pretrained trunk as backbone (COCO box AP)."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def detr_transfer(detection_url: str, backbone_url: str, run_root: str, arch: str, detr_args: list,
                  metrics: Output[Metrics]) -> str:
    """Returns the URL of the metrics.json it wrote (AP numbers)."""
    from components.runtime import log_metrics, read_metrics, run_trainer, step_url

    dump_url = step_url(run_root, "detr")
    run_trainer("detr", ["--coco_path", detection_url, "--pretrained", backbone_url,
                         "--dump_path", dump_url, "--arch", arch, *detr_args])
    log_metrics(metrics, read_metrics(dump_url), dump_url)
    return step_url(dump_url, "metrics.json")
