"""Published numbers of the recipes in trainer/presets.py (method notes, "Reference numbers"): what a run of a
published preset should reach on ImageNet with a ResNet-50, so a report can put its own figure beside it."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.presets import PRESETS


@dataclass(frozen=True)
class Reference:
    value: float  # top-1 accuracy, %
    source: str  # which published run it comes from, in a few words


# SwAV, ImageNet, ResNet-50, linear top-1 (batch 4096: 2x224 + 6x96 unless named).
LINEAR_TOP1 = {
    "swav_100ep": 72.1, "swav_200ep": 73.9, "swav_400ep": 74.6, "swav_800ep": 75.3,
    "swav_400ep_2x224": 70.1, "swav_200ep_bs256": 72.7, "swav_400ep_bs256": 74.3,
}
# Semi-supervised fine-tuning with 1% / 10% of ImageNet's labels; SwAV published them for its 800-epoch model only.
SEMISUP_TOP1 = {1: 53.9, 10: 70.2}


def published(preset: str | None, evaluation: str) -> Reference | None:
    """The published top-1 for `evaluation` ("eval-linear", "eval-semisup-1pct", "eval-semisup-10pct") of a
    run that used `preset`; None for other evaluations, for no preset and for recipes that are not published
    (demo_cpu)."""
    if not preset or preset not in LINEAR_TOP1 or preset not in PRESETS:
        return None
    if evaluation == "eval-linear":
        return Reference(LINEAR_TOP1[preset], f"SwAV {preset}, ImageNet, ResNet-50")
    for percent, value in SEMISUP_TOP1.items():
        if evaluation == f"eval-semisup-{percent}pct":
            return Reference(value, "SwAV 800 ep, ImageNet, ResNet-50")
    return None
