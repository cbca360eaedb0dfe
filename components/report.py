"""The last step: the run's report, as `unmix-swav report` writes it (trainer/report), plus kfp's artifacts.

`run_report` takes each step's dump URL and its random-init twin's, one input per catalogue row
(components/steps.py; tests/components/test_catalogue.py holds the signature to it)."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Markdown, Metrics, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def run_report(run_root: str, report_html: Output[HTML], report_markdown: Output[Markdown],
               headline_metrics: Output[Metrics], linear_confusion: Output[ClassificationMetrics],
               pretrain_url: str = "", knn_url: str = "", linear_url: str = "", semisup_1pct_url: str = "",
               semisup_10pct_url: str = "", detr_url: str = "", knn_random_url: str = "",
               linear_random_url: str = "", semisup_1pct_random_url: str = "", semisup_10pct_random_url: str = "",
               detr_random_url: str = "") -> str:
    """The run's report from each step's dump URL (or metrics.json URL; empty: the step is absent) and from
    the random-init twins': report.html, report.md and the figures under <run_root>/report, the headline
    numbers as kfp Metrics, the linear probe's confusion matrix; returns the report's URL."""
    from components.runtime import log_report, run_step
    from components.steps import report_urls
    from trainer.report.build import write_report

    steps, baselines = report_urls(locals())
    written = run_step(lambda: write_report(run_root, steps, baselines))
    log_report(written, report_html, report_markdown, headline_metrics, linear_confusion)
    return written.url
