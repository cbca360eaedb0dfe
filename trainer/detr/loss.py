"""DETR's weighted set loss from transformers' loss terms, with box terms normalised across ranks.

transformers divides the box terms by this rank's box count (it reduces across ranks only under
accelerate); DETR divides by the mean count over all ranks, so that every box weighs the same whichever
rank holds it. We rescale those terms accordingly and weight them as DETR does (aux decoder layers too).
"""

from __future__ import annotations

import torch
from transformers import DetrConfig

from trainer.distributed import all_reduce_sum, world_size

BOX_TERMS = ("loss_bbox", "loss_giou")


def _base_name(key: str) -> str:
    """`loss_bbox_3` (auxiliary decoder layer 3) -> `loss_bbox`."""
    head, _, tail = key.rpartition("_")
    return head if tail.isdigit() else key


def mean_boxes_per_rank(local_boxes: int, device: torch.device) -> float:
    total = all_reduce_sum(torch.tensor([float(local_boxes)], device=device))
    return float(total.item()) / world_size()


def set_loss(loss_dict: dict[str, torch.Tensor], config: DetrConfig, local_boxes: int,
             mean_boxes: float) -> torch.Tensor:
    weights = {"loss_ce": 1.0, "loss_bbox": float(config.bbox_loss_coefficient),
               "loss_giou": float(config.giou_loss_coefficient)}
    box_scale = max(local_boxes, 1) / max(mean_boxes, 1.0)
    total = torch.zeros((), device=next(iter(loss_dict.values())).device)
    for key, value in loss_dict.items():
        name = _base_name(key)
        if name in weights:
            total = total + weights[name] * value * (box_scale if name in BOX_TERMS else 1.0)
    return total
