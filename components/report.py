"""Step 4: one HTML page with every step's numbers and the pretraining loss curve."""

from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def report(run_root: str, pretrain_dump_url: str, pretrain_metrics: Input[Metrics],
           linear_metrics: Input[Metrics], semisup_1pct_metrics: Input[Metrics],
           semisup_10pct_metrics: Input[Metrics], detr_metrics: Input[Metrics],
           report_html: Output[HTML]) -> str:
    """Writes report.html (and loss_curve.png) under <run_root>/report; returns the report's URL."""
    from components.report_page import build_report

    sections = {
        "Pretraining": pretrain_metrics.metadata,
        "Linear evaluation": linear_metrics.metadata,
        "Semi-supervised, 1% labels": semisup_1pct_metrics.metadata,
        "Semi-supervised, 10% labels": semisup_10pct_metrics.metadata,
        "DETR transfer": detr_metrics.metadata,
    }
    return build_report(run_root, pretrain_dump_url, sections, report_html)
