"""SwAV's recipe scaled to a global batch: each derived flag with the rule (one sentence) that gave it.

SwAV publishes two ImageNet recipes (method notes; trainer/presets.py): global batch 4096 (base_lr 4.8, final_lr
0.0048, 10 warm-up epochs from 0.3, prototypes frozen 313 iterations, no queue) and 256 (0.6, 0.0006, no
warm-up, queue 3840 from epoch 15, frozen 5005 iterations). The rules below reproduce both exactly and
interpolate between them in log(batch): the learning rate as a power law through the two points,
lr = 0.6 x (B / 256)^0.75 (log 8 / log 16 = 0.75: between linear scaling, exponent 1, which would give 9.6 at
4096 from 0.6 at 256, or 0.3 at 256 from 4.8 at 4096, and square-root scaling, 0.5). A power law is the one
simple form through both anchors that stays positive and has no batch of its own; outside [256, 4096] it is an
extrapolation and said so. A flag the user gave (command line or config file) is kept and checked against its
rule: a warning with the reason when it disagrees by more than TOLERANCE.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

SMALL, LARGE = 256, 4096  # the published global batches
LR_SMALL, LR_LARGE = 0.6, 4.8
LR_EXPONENT = math.log(LR_LARGE / LR_SMALL) / math.log(LARGE / SMALL)  # 0.75
FINAL_LR_RATIO = 1e-3  # 0.0048 / 4.8 = 0.0006 / 0.6
WARMUP_LARGE = 10  # epochs at 4096; none at 256
START_WARMUP_RATIO = 0.3 / 4.8  # the 4096 recipe warms up from base_lr / 16
QUEUE_EFFECTIVE = 4096  # batch + queue of both recipes: 256 + 3840 = 4096 + 0
QUEUE_START_EPOCH = 15  # the 256 recipe, at 200 and 400 epochs alike
IMAGENET_IMAGES, IMAGENET_CLASSES = 1_281_167, 1000
PROTOTYPES_PUBLISHED = 3000  # both recipes, ImageNet's 1000 classes
PROTOTYPES_PER_CLASS = 10  # the SwAV authors' advice against collapse on small data (method notes)
TOLERANCE = 0.10  # a given value within 10% of the rule's is not worth a warning
DERIVED = ("base_lr", "final_lr", "warmup_epochs", "start_warmup", "queue_length", "epoch_queue_starts",
           "freeze_prototypes_niters", "nmb_prototypes")


@dataclass(frozen=True)
class Derived:
    flag: str
    value: float | int  # what the run uses: the rule's value, or the user's where given
    rule_value: float | int  # what the rule gives
    rule: str  # one sentence
    given: bool  # the user gave the flag: kept, only checked
    warning: str | None = None


def _position(batch: int) -> tuple[float, str]:
    """Where `batch` lies between the anchors, t = log(B/256)/log(16) (0 at 256, 1 at 4096), and how to say it."""
    t = math.log(batch / SMALL) / math.log(LARGE / SMALL)
    if 0 <= t <= 1:
        where = ("the 256 recipe" if batch == SMALL else "the 4096 recipe" if batch == LARGE
                 else "interpolated between 256 and 4096")
    else:
        where = f"EXTRAPOLATED {'below 256' if t < 0 else 'above 4096'} (no published recipe there)"
    return t, where


def learning_rates(batch: int) -> tuple[float, float, str]:
    t, where = _position(batch)
    base = LR_SMALL * (batch / SMALL) ** LR_EXPONENT
    rule = (f"{base:.4g} at global batch {batch}: 0.6 x (B/256)^0.75, the power law through 0.6 at 256 and 4.8 at "
            f"4096; {where}")
    return base, base * FINAL_LR_RATIO, rule


def warmup(batch: int, epochs: int) -> tuple[int, str]:
    t, where = _position(batch)
    value = min(round(WARMUP_LARGE * min(max(t, 0.0), 1.0)), epochs)
    return value, (f"{value} epochs: 10 x log(B/256)/log(16), 0 at 256 and 10 at 4096 (linear in log batch, "
                   f"clamped to [0, 10] and to --epochs); {where}")


def queue(batch: int, num_images: int) -> tuple[int, str]:
    steps = max(round(QUEUE_EFFECTIVE / batch) - 1, 0)
    value = steps * batch
    rule = (f"{value}: the multiple of the global batch {batch} that brings batch + queue nearest to 4096, as in "
            "both recipes (256 + 3840, 4096 + 0)")
    if value and value + batch > num_images:
        value = max((num_images - batch) // batch, 0) * batch
        rule += f"; cut to {value} so that batch + queue hold no image twice ({num_images} images)"
    return value, rule


def queue_start(queue_length: int, epochs: int) -> tuple[int, str]:
    if not queue_length:
        return QUEUE_START_EPOCH, "unused without a queue (the 256 recipe's 15 kept)"
    value = min(QUEUE_START_EPOCH, epochs // 2)
    clamp = "" if value == QUEUE_START_EPOCH else f", cut to half of --epochs {epochs} so the queue is used"
    return value, f"epoch {value}: the 256 recipe starts its queue at epoch 15 (at 200 and 400 epochs alike){clamp}"


def freeze(batch: int, num_images: int) -> tuple[int, str]:
    value = max(round(num_images / batch), 1)
    return value, (f"{value} iterations = one epoch of {num_images} images at global batch {batch}, as both recipes "
                   "(313 x 4096 = 5005 x 256 = 1.28 M images)")


def prototypes(num_classes: int, feat_dim: int) -> tuple[int, str]:
    value = min(PROTOTYPES_PUBLISHED, max(PROTOTYPES_PER_CLASS * num_classes, 2 * feat_dim))
    return value, (f"{value}: 10 x the {num_classes} classes (the SwAV authors' advice against collapse), at most "
                   f"the published 3000 and at least 2 x --feat_dim {feat_dim}")


def rules(cfg: argparse.Namespace, global_batch: int, num_images: int, num_classes: int,
          given: set[str] = frozenset()) -> dict[str, tuple[float | int, str]]:
    """flag -> (the rule's value, the rule) for every flag in DERIVED. A rule that follows another flag (final_lr
    and start_warmup follow base_lr, start_warmup the warm-up, the queue's start the queue) follows the value the
    run will use: the user's where given."""
    out: dict[str, tuple[float | int, str]] = {}

    def used(flag: str) -> float | int:
        return getattr(cfg, flag) if flag in given else out[flag][0]

    base, _, lr_rule = learning_rates(global_batch)
    if cfg.optimizer != "lars":
        lr_rule = f"--optimizer {cfg.optimizer}: SwAV publishes LARS recipes only, so its value is kept"
        base = cfg.base_lr
    out["base_lr"] = (base, lr_rule)
    final = used("base_lr") * FINAL_LR_RATIO if cfg.optimizer == "lars" else cfg.final_lr
    out["final_lr"] = (final, f"{final:.4g} = base_lr / 1000, as both recipes (4.8 -> 0.0048, 0.6 -> 0.0006)"
                       if cfg.optimizer == "lars" else lr_rule)
    out["warmup_epochs"] = warmup(global_batch, cfg.epochs)
    start = used("base_lr") * START_WARMUP_RATIO if used("warmup_epochs") else 0.0
    out["start_warmup"] = (start, f"{start:.4g} = base_lr / 16 as the 4096 recipe (0.3 for 4.8)" if start
                           else "0: no warm-up")
    out["queue_length"] = queue(global_batch, num_images)
    out["epoch_queue_starts"] = queue_start(used("queue_length"), cfg.epochs)
    out["freeze_prototypes_niters"] = freeze(global_batch, num_images)
    out["nmb_prototypes"] = prototypes(num_classes, cfg.feat_dim)
    return out


def _disagrees(flag: str, given: float, wanted: float) -> bool:
    if flag == "queue_length" or flag == "epoch_queue_starts":
        return given != wanted
    if wanted == 0 or given == 0:
        return given != wanted
    return abs(given - wanted) > TOLERANCE * abs(wanted)


def derive(cfg: argparse.Namespace, given: set[str], global_batch: int, num_images: int, num_classes: int
           ) -> list[Derived]:
    """Every flag of DERIVED: the rule's value, or the user's (kept, with a warning when it disagrees)."""
    out = []
    for flag, (wanted, rule) in rules(cfg, global_batch, num_images, num_classes, given).items():
        if flag not in given:
            out.append(Derived(flag, wanted, wanted, rule, given=False))
            continue
        value = getattr(cfg, flag)
        warning = None
        if _disagrees(flag, value, wanted):
            warning = f"--{flag} {value:g} (given) differs from the rule's {wanted:.4g}: {rule}"
        if flag == "queue_length" and value and cfg.epoch_queue_starts >= cfg.epochs:
            warning = (f"--queue_length {value} is never used: --epoch_queue_starts {cfg.epoch_queue_starts} is not "
                       f"before --epochs {cfg.epochs}")
        out.append(Derived(flag, value, wanted, rule, given=True, warning=warning))
    return out
