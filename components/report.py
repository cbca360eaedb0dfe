"""The last step: the run's report (components/report_page.py).

`run_report` takes each step's dump URL and its random-init twin's."""

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
    from components.report_page import build_report

    steps = {"pretrain": pretrain_url, "eval-knn": knn_url, "eval-linear": linear_url,
             "eval-semisup-1pct": semisup_1pct_url, "eval-semisup-10pct": semisup_10pct_url, "detr": detr_url}
    baselines = {"eval-knn": knn_random_url, "eval-linear": linear_random_url,
                 "eval-semisup-1pct": semisup_1pct_random_url, "eval-semisup-10pct": semisup_10pct_random_url,
                 "detr": detr_random_url}
    return build_report(run_root, steps, baselines, report_html, report_markdown, headline_metrics,
                        linear_confusion)
