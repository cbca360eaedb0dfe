"""Un-Mix: global (mixup) and region (CutMix) mixtures of a crop with the same crop of the batch reversed.

All draws come from an explicit generator, so each rank draws its own values and a resumed run repeats
them exactly. Mixing happens on whatever device the crops already live on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixDraw:
    """One step's draw: the mixture kind and the Beta-distributed weight of the original sample."""

    mode: str  # "global" or "region"
    lam: float


def draw_mix(unmix_prob: float, beta: float, generator: torch.Generator) -> MixDraw:
    """r ~ U(0, 1) chooses the mode (global when r < unmix_prob), lam ~ Beta(beta, beta)."""
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
    r = rng.random()
    return MixDraw(mode="global" if r < unmix_prob else "region", lam=float(rng.beta(beta, beta)))


def mix_batch(
    x: torch.Tensor, lam: float, mode: str, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """Mix `x` (B, C, H, W) with `x.flip(0)`; returns (mixture, effective lam). `x` is never modified.

    global: lam * x + (1 - lam) * x_rev. region: a box of area (1 - lam) of the crop, centred uniformly at
    random, is pasted from x_rev; the effective lam is 1 - box area / crop area (the box is clipped at the
    borders).
    """
    reversed_x = x.flip(0)
    if mode == "global":
        return lam * x + (1.0 - lam) * reversed_x, lam
    if mode != "region":
        raise ValueError(f"mode must be 'global' or 'region', not {mode!r}")
    height, width = x.shape[-2:]
    cut_ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
    centre_y = int(torch.randint(height, (), generator=generator))
    centre_x = int(torch.randint(width, (), generator=generator))
    y1, y2 = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
    x1, x2 = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
    mixed = x.clone()
    mixed[..., y1:y2, x1:x2] = reversed_x[..., y1:y2, x1:x2]
    return mixed, 1.0 - (y2 - y1) * (x2 - x1) / (height * width)


def mix_crops(
    crops: list[torch.Tensor], draw: MixDraw, generator: torch.Generator
) -> tuple[list[torch.Tensor], float]:
    """One mixture per crop pair (0,1), (2,3), ...: the first crop of each pair mixed with its reversal.

    Every pair sizes its box from the step's own lam (not from a previous pair's effective value). Returns
    the mixtures and the mean effective lam, the weight of the mixture loss.
    """
    if len(crops) % 2:
        raise ValueError(f"Un-Mix needs an even number of crops, got {len(crops)}")
    mixtures, lams = [], []
    for first in range(0, len(crops), 2):
        mixed, lam_eff = mix_batch(crops[first], draw.lam, draw.mode, generator)
        mixtures.append(mixed)
        lams.append(lam_eff)
    return mixtures, sum(lams) / len(lams)


def unmix_loss_inputs(
    scores: list[torch.Tensor], mix_scores: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The crop lists of L_mix and L_mix_rev.

    L_mix: every first-of-pair crop replaced by its mixture. L_mix_rev: the same with each mixture's scores
    reversed along the batch, so that a mixture is matched with the sample it holds (1 - lam) of.
    """
    mixed, mixed_reversed = list(scores), list(scores)
    for pair, mixture in enumerate(mix_scores):
        mixed[2 * pair] = mixture
        mixed_reversed[2 * pair] = mixture.flip(0)
    return mixed, mixed_reversed
