"""The generated COCO-format set: the 2017 layout, boxes that fit their shapes, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.detr.synthetic_coco import make_shapes_coco
from trainer.errors import UserError


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def test_layout_and_counts(coco_dir: Path) -> None:
    for split, count in (("train", 24), ("val", 8)):
        document = _load(coco_dir, split)
        assert len(document["images"]) == count
        assert len(list((coco_dir / f"{split}2017").glob("*.jpg"))) == count
        assert {c["id"] for c in document["categories"]} == {1, 2, 3}
        per_image = {image["id"]: 0 for image in document["images"]}
        for annotation in document["annotations"]:
            per_image[annotation["image_id"]] += 1
        assert all(1 <= n <= 3 for n in per_image.values())


def test_boxes_are_tight_around_their_shapes(coco_dir: Path) -> None:
    document = _load(coco_dir, "train")
    for image in document["images"][:8]:
        pixels = np.asarray(Image.open(coco_dir / "train2017" / image["file_name"]), dtype=np.float32)
        boxes = [a["bbox"] for a in document["annotations"] if a["image_id"] == image["id"]]
        outside = np.ones(pixels.shape[:2], dtype=bool)
        for x, y, w, h in boxes:
            assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            outside[y:y + h, x:x + w] = False
        distance = np.abs(pixels - np.median(pixels[outside], axis=0)).max(axis=-1)
        for x, y, w, h in boxes:
            # Shapes are drawn >= 88 levels from the background (JPEG softens a triangle's one-pixel apex):
            # every edge of the box touches the shape.
            edges = [distance[y, x:x + w], distance[y + h - 1, x:x + w], distance[y:y + h, x],
                     distance[y:y + h, x + w - 1]]
            assert all(edge.max() > 45 for edge in edges), (image["file_name"], (x, y, w, h))
        assert np.median(distance[outside]) < 20


def test_same_seed_same_data(tmp_path: Path) -> None:
    make_shapes_coco(str(tmp_path / "a"), train_images=3, val_images=1, image_size=48, seed=5)
    make_shapes_coco(str(tmp_path / "b"), train_images=3, val_images=1, image_size=48, seed=5)
    make_shapes_coco(str(tmp_path / "c"), train_images=3, val_images=1, image_size=48, seed=6)
    assert _load(tmp_path / "a", "train") == _load(tmp_path / "b", "train")
    assert _load(tmp_path / "a", "train") != _load(tmp_path / "c", "train")
    first = tmp_path / "a" / "train2017" / "000000000001.jpg"
    assert first.read_bytes() == (tmp_path / "b" / "train2017" / "000000000001.jpg").read_bytes()


def test_refuses_empty_split(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="both splits"):
        make_shapes_coco(str(tmp_path), train_images=0, val_images=1, image_size=64, seed=0)
