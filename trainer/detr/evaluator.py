"""COCO box AP with pycocotools' COCOeval, from DETR outputs.

Every query is a detection (DETR's post-processing): score and label from the softmax without the
no-object class, box scaled from [0, 1] of the resized image back to the original image.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections(logits: torch.Tensor, pred_boxes: torch.Tensor,
               targets: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """COCO result records (image_id, category_id, bbox x, y, w, h in original pixels, score)."""
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    results = []
    for image_scores, image_labels, boxes, target in zip(scores, labels, pred_boxes, targets, strict=True):
        height, width = (float(v) for v in target["orig_size"])
        cx, cy, w, h = boxes.float().unbind(-1)
        xywh = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], dim=-1)
        image_id = int(target["image_id"])
        results.extend({"image_id": image_id, "category_id": int(label), "bbox": [float(v) for v in box],
                        "score": float(score)}
                       for score, label, box in zip(image_scores, image_labels, xywh.tolist(), strict=True))
    return results


def _ground_truth(annotations: dict[str, Any]) -> COCO:
    coco = COCO()
    annotated = []
    for annotation in annotations["annotations"]:
        # COCOeval sorts objects into small / medium / large by `area`; some exports leave it out.
        area = annotation.get("area", annotation["bbox"][2] * annotation["bbox"][3])
        annotated.append({**annotation, "area": area})
    coco.dataset = {**annotations, "annotations": annotated}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def box_ap(annotations: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """COCO box AP, AP50, AP75, APs, APm, APl (in [0, 1]; -1 where a size range has no objects)."""
    if not results:
        log.warning("no detections to evaluate: every AP is 0")
        return dict.fromkeys(AP_NAMES, 0.0)
    ground_truth = _ground_truth(annotations)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    images = len({record["image_id"] for record in results})
    log.info("COCO box evaluation of %d detections on %d images:\n%s", len(results), images,
             printed.getvalue().rstrip())
    return {name: float(value) for name, value in zip(AP_NAMES, evaluation.stats[:6], strict=True)}
