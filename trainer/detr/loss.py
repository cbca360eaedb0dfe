"""DETR's set loss with one host transfer a step, installed as the model's loss function.

transformers' DETR loss runs the Hungarian matcher once per decoder layer, each time copying its cost matrix
to the host (6 waits a step with auxiliary losses), reads the box count with `.item()`, and checks every
box set with a host-side `.all()`. Here the cost matrices of all layers are built on the device and copied
once (scipy's Hungarian algorithm runs on the host: the one unavoidable wait), the matched indices go back
in one copy, and the box terms are divided by DETR's normaliser, the mean box count over ranks, kept as a
device tensor (all-reduced before the forward). The terms and weights are DETR's: cross-entropy with the
no-object class weighted `eos_coefficient`, L1 and GIoU on matched boxes, the cardinality error (logged),
the same terms for every auxiliary decoder layer (suffix `_<layer>`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou
from transformers import DetrConfig

from trainer.distributed import all_reduce_sum, world_size

TERMS = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")


def mean_boxes_per_rank(local_boxes: int, device: torch.device) -> torch.Tensor:
    """DETR's box normaliser, the mean box count over ranks (at least 1), as a device tensor (no host sync)."""
    total = all_reduce_sum(torch.tensor([float(local_boxes)], device=device))
    return (total / world_size()).clamp(min=1.0)


def cost_matrices(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                  config: DetrConfig) -> torch.Tensor:
    """(layers, batch, queries, all targets) matching costs of DETR's matcher, for every layer at once."""
    target_ids = torch.cat([t["class_labels"] for t in targets])
    target_boxes = torch.cat([t["boxes"] for t in targets])
    layers, batch, queries = logits.shape[:3]
    flat_boxes = boxes.flatten(1, 2).float()  # (layers, batch x queries, 4)
    class_cost = -logits.softmax(-1).flatten(1, 2)[..., target_ids]
    bbox_cost = torch.cdist(flat_boxes, target_boxes.float().expand(layers, -1, -1), p=1)
    giou_cost = -generalized_box_iou(box_convert(flat_boxes, "cxcywh", "xyxy"),
                                     box_convert(target_boxes.float(), "cxcywh", "xyxy"))
    cost = config.bbox_cost * bbox_cost + config.class_cost * class_cost + config.giou_cost * giou_cost
    return torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8).view(layers, batch, queries, -1)


def hungarian(costs: np.ndarray, sizes: list[int]) -> np.ndarray:
    """(3, layers, matches) int64 host indices (image, query, target in the batch's concatenation)."""
    layers, batch = costs.shape[:2]
    out = []
    for layer in range(layers):
        rows: list[np.ndarray] = []
        start = 0
        for image, size in enumerate(sizes):
            query, target = linear_sum_assignment(costs[layer, image, :, start:start + size])
            rows.append(np.stack([np.full_like(query, image), query, target + start]))
            start += size
        out.append(np.concatenate(rows, axis=1) if rows else np.zeros((3, 0), dtype=np.int64))
    return np.stack(out, axis=1).astype(np.int64)


def match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
          config: DetrConfig) -> torch.Tensor:
    """The matching of every layer: (3, layers, matches) indices on the device. The step's one host wait:
    all cost matrices travel to the host in one copy, the indices back in another."""
    with torch.no_grad():
        costs = cost_matrices(logits, boxes, targets, config).cpu().numpy()
    indices = torch.from_numpy(hungarian(costs, [len(t["class_labels"]) for t in targets]))
    if logits.device.type == "cuda":
        indices = indices.pin_memory()
    return indices.to(logits.device, non_blocking=True)


def layer_terms(logits: torch.Tensor, boxes: torch.Tensor, indices: torch.Tensor, target_ids: torch.Tensor,
                target_boxes: torch.Tensor, target_counts: torch.Tensor, num_boxes: torch.Tensor,
                eos_coefficient: float) -> dict[str, torch.Tensor]:
    """DETR's terms for one decoder layer; `indices` (3, matches): image, query, target."""
    image, query, target = indices
    num_classes = logits.shape[-1] - 1
    classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    classes[image, query] = target_ids[target]
    class_weight = torch.ones(num_classes + 1, device=logits.device)
    class_weight[-1] = eos_coefficient
    matched, wanted = boxes[image, query], target_boxes[target]
    giou = generalized_box_iou(box_convert(matched, "cxcywh", "xyxy")[:, None],
                               box_convert(wanted, "cxcywh", "xyxy")[:, None]).flatten()
    with torch.no_grad():
        predicted = (logits.argmax(-1) != num_classes).sum(1).float()
        cardinality = F.l1_loss(predicted, target_counts)
    return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), classes, class_weight),
            "loss_bbox": F.l1_loss(matched, wanted, reduction="none").sum() / num_boxes,
            "loss_giou": (1 - giou).sum() / num_boxes,
            "cardinality_error": cardinality}


class SetLoss:
    """transformers' `loss_function` interface: (logits, labels, device, pred_boxes, config, outputs_class,
    outputs_coord) -> (loss, loss_dict, auxiliary_outputs). Set `num_boxes` (mean_boxes_per_rank) before each
    forward; without it this rank's own count is used (one process)."""

    def __init__(self) -> None:
        self.num_boxes: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, labels: list[dict[str, torch.Tensor]], device: torch.device,
                 pred_boxes: torch.Tensor, config: DetrConfig, outputs_class: torch.Tensor | None = None,
                 outputs_coord: torch.Tensor | None = None, **_: object
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict[str, torch.Tensor]] | None]:
        layer_logits, layer_boxes, auxiliary = logits[None], pred_boxes[None], None
        if config.auxiliary_loss and outputs_class is not None:
            layer_logits = torch.cat([outputs_class[:-1], logits[None]])
            layer_boxes = torch.cat([outputs_coord[:-1], pred_boxes[None]])
            auxiliary = [{"logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1],
                                                                          strict=True)]
        counts = [len(t["class_labels"]) for t in labels]
        num_boxes = self.num_boxes
        if num_boxes is None:
            num_boxes = torch.tensor([max(float(sum(counts)), 1.0)], device=logits.device)
        indices = match(layer_logits, layer_boxes, labels, config)
        target_ids = torch.cat([t["class_labels"] for t in labels])
        target_boxes = torch.cat([t["boxes"] for t in labels])
        target_counts = torch.tensor(counts, dtype=torch.float32, device=logits.device)
        weights = {"loss_ce": 1.0, "loss_bbox": float(config.bbox_loss_coefficient),
                   "loss_giou": float(config.giou_loss_coefficient)}
        loss_dict: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=logits.device)
        last = len(layer_logits) - 1
        for layer in range(len(layer_logits)):
            terms = layer_terms(layer_logits[layer], layer_boxes[layer], indices[:, layer], target_ids,
                                target_boxes, target_counts, num_boxes[0], config.eos_coefficient)
            loss = loss + sum(weight * terms[name] for name, weight in weights.items())
            suffix = "" if layer == last else f"_{layer}"
            loss_dict.update({f"{name}{suffix}": value for name, value in terms.items()})
        return loss, loss_dict, auxiliary


def install_set_loss(model: torch.nn.Module) -> SetLoss:
    """Our SetLoss as `model`'s loss function (once); returns it."""
    if not isinstance(getattr(model, "_loss_function", None), SetLoss):
        model.loss_function = SetLoss()
    return model.loss_function
