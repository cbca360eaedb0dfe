"""The step catalogue: every distributed step of a run, once, with what the trainer knows about it.

A row says which trainer command a step runs, with which data and label share, where it writes under the run's
root (its key), how people call it and what the report reads from its metrics.json. The pipeline (DAG, check
step, argv builders: components/steps.py adds the kfp-level facts) and the report (trainer/report) read it.
Adding an evaluation is one row here, one in components/steps.py, and its trainer command.
"""

from __future__ import annotations

from dataclasses import dataclass

# The flag that names a step's data, by the data's kind: staged images, or a COCO-format detection set.
DATA_FLAGS = {"images": "--data_path", "detection": "--coco_path"}
BASELINE_SUFFIX = "-random"  # an evaluation's random-init twin writes beside it, in <key>-random
# Not distributed steps, so not rows: where the run's export (`unmix-swav export`) goes under the run's root, and
# the evaluation whose head it ships as the classifier (its dump is the export's --linear).
EXPORT_FOLDER = "export"
CLASSIFIER_STEP = "eval-linear"
MONITOR_SPLITS = ("train", "val")  # pretraining's kNN monitor reads both of --knn_eval_path, as eval-knn does


@dataclass(frozen=True)
class Headline:
    """A number the report's summary table shows for a step: metrics.json's `field` (dotted for nested)."""

    metric: str  # as the table names it: top-1, box AP
    field: str  # top1, box_ap.AP
    top_k: int = 1  # chance is min(100, top_k * 100 / classes); 0: no chance level (detection)
    fraction: bool = False  # stored as a fraction (COCO AP, -1 when not computed): shown x 100


@dataclass(frozen=True)
class Step:
    key: str  # where it writes under the run's root, and its name in the report: eval-semisup-1pct
    command: str  # the trainer command: eval-semisup
    name: str  # how the pipeline and its check step call it: semi-supervised 1%
    title: str  # the report's heading: Semi-supervised, 1% labels
    data: str = "images"  # a key of DATA_FLAGS
    labels_percent: int | None = None  # eval-semisup's --labels_perc
    splits: tuple[str, ...] = ("train", "val")  # what it reads of its data (the check step checks they exist)
    per_epoch: bool = False  # trains for epochs: the report plots its accuracy and loss per epoch
    headlines: tuple[Headline, ...] = ()

    @property
    def evaluation(self) -> bool:
        """Scores the pretrained trunk (and, with baselines, a random-init twin beside it)."""
        return self.command != "pretrain"

    @property
    def slug(self) -> str:
        """The key as an identifier (kfp parameter and metric names): semisup_1pct."""
        return self.key.removeprefix("eval-").replace("-", "_")


TOP1 = Headline("top-1", "top1")
STEPS = (
    Step("pretrain", "pretrain", "pretraining", "Pretraining", splits=("train",)),
    Step("eval-knn", "eval-knn", "kNN evaluation", "kNN", headlines=(TOP1,)),
    Step("eval-linear", "eval-linear", "linear evaluation", "Linear probe", per_epoch=True,
         headlines=(TOP1, Headline("top-5", "top5", top_k=5))),
    *(Step(f"eval-semisup-{percent}pct", "eval-semisup", f"semi-supervised {percent}%",
           f"Semi-supervised, {percent}% labels", labels_percent=percent, per_epoch=True, headlines=(TOP1,))
      for percent in (1, 10)),
    Step("detr", "detr", "DETR transfer", "DETR detection transfer", data="detection", per_epoch=True,
         headlines=(Headline("box AP", "box_ap.AP", top_k=0, fraction=True),
                    Headline("AP50", "box_ap.AP50", top_k=0, fraction=True))),
)
BY_KEY = {step.key: step for step in STEPS}
EVALUATIONS = tuple(step for step in STEPS if step.evaluation)


def step(key: str) -> Step:
    """The row of `key`; ValueError names the keys there are."""
    if key not in BY_KEY:
        raise ValueError(f"unknown step {key!r}; steps are {', '.join(BY_KEY)}")
    return BY_KEY[key]
