"""COCO box AP through pycocotools: perfect predictions score 1, displaced ones less, none score 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.detr.evaluator import AP_NAMES, box_ap, detections


def _predictions_from_ground_truth(annotations: dict, shift: float) -> list[dict]:
    """DETR-style outputs (4 queries per image; the unused ones confidently 'no object') for each image."""
    results = []
    classes = max(c["id"] for c in annotations["categories"]) + 1
    for image in annotations["images"]:
        objects = [a for a in annotations["annotations"] if a["image_id"] == image["id"]]
        logits = torch.full((1, 4, classes + 1), -10.0)
        logits[0, :, -1] = 10.0
        boxes = torch.full((1, 4, 4), 0.5)
        for query, obj in enumerate(objects):
            x, y, w, h = obj["bbox"]
            logits[0, query, obj["category_id"]], logits[0, query, -1] = 10.0, -10.0
            boxes[0, query] = torch.tensor([(x + w / 2 + shift * w) / image["width"],
                                            (y + h / 2) / image["height"], w / image["width"],
                                            h / image["height"]])
        target = {"image_id": torch.tensor(image["id"]), "orig_size": torch.tensor([image["height"], image["width"]])}
        results.extend(detections(logits, boxes, [target]))
    return results


@pytest.fixture
def val_annotations(coco_dir: Path) -> dict:
    return json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())


def test_perfect_predictions_score_one(val_annotations: dict) -> None:
    results = _predictions_from_ground_truth(val_annotations, shift=0.0)
    assert len(results) == 4 * len(val_annotations["images"])
    ap = box_ap(val_annotations, results)
    assert set(ap) == set(AP_NAMES)
    assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0)


def test_displaced_predictions_score_lower(val_annotations: dict) -> None:
    ap = box_ap(val_annotations, _predictions_from_ground_truth(val_annotations, shift=0.2))
    assert ap["AP50"] == pytest.approx(1.0)  # IoU 0.67 still counts at 0.5 ...
    assert ap["AP75"] < 0.01 and 0.1 < ap["AP"] < 0.6  # ... but not at 0.75


def test_no_detections_score_zero(val_annotations: dict) -> None:
    assert box_ap(val_annotations, []) == dict.fromkeys(AP_NAMES, 0.0)
