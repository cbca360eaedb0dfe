"""COCO-format detection data from any fsspec URL: `<coco_path>/{train,val}2017/` + `annotations/`.

Crowd annotations are left out of training targets (as DETR does); COCOeval still sees them in the
ground truth. Class labels are COCO category ids as they are (DETR's convention: 91 classes for COCO),
so predictions need no mapping back.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from PIL import Image, ImageOps

from trainer import storage
from trainer.detr import transforms
from trainer.errors import UserError
from trainer.seeding import generator


def annotations_url(coco_path: str, split: str) -> str:
    return storage.join(coco_path, "annotations", f"instances_{split}2017.json")


def load_annotations(coco_path: str, split: str) -> dict[str, Any]:
    url = annotations_url(coco_path, split)
    if not storage.exists(url):
        raise UserError(f"--coco_path {coco_path} has no {url}; it must hold train2017/, val2017/ and "
                        "annotations/instances_{train,val}2017.json (COCO 2017 layout)")
    try:
        document = json.loads(storage.read_text(url))
    except json.JSONDecodeError as error:
        raise UserError(f"{url} is not valid JSON ({error}); pass COCO-format annotations") from error
    for key in ("images", "annotations", "categories"):
        if key not in document:
            raise UserError(f"{url} has no '{key}' list; pass COCO-format instance annotations")
    if not document["images"]:
        raise UserError(f"{url} lists no images; the {split} split must not be empty")
    return document


def num_classes_of(annotations: dict[str, Any]) -> int:
    """DETR's class count: the largest category id + 1 (91 for COCO)."""
    return max(int(category["id"]) for category in annotations["categories"]) + 1


class CocoDetection(torch.utils.data.Dataset):
    """One split. `set_epoch` before each epoch: DataLoader workers are re-created per epoch and see it."""

    def __init__(self, coco_path: str, split: str, annotations: dict[str, Any], image_size: int, seed: int,
                 train: bool) -> None:
        self.coco_path, self.split, self.image_size, self.seed, self.train = (
            coco_path, split, image_size, seed, train)
        self.epoch = 0
        self.images = sorted(annotations["images"], key=lambda image: image["id"])
        self._objects: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in self.images}
        for annotation in annotations["annotations"]:
            if not annotation.get("iscrowd", 0) and annotation["image_id"] in self._objects:
                self._objects[annotation["image_id"]].append(annotation)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def _load_image(self, record: dict[str, Any]) -> Image.Image:
        url = storage.join(self.coco_path, f"{self.split}2017", record["file_name"])
        with Image.open(io.BytesIO(storage.read_bytes(url))) as image:
            return ImageOps.exif_transpose(image).convert("RGB")

    def _boxes(self, record: dict[str, Any], width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        objects = self._objects[record["id"]]
        boxes = torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x0, y0, x1, y1
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height]))
        labels = torch.tensor([obj["category_id"] for obj in objects], dtype=torch.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], labels[keep]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.images[index]
        image = self._load_image(record)
        sample = (image, *self._boxes(record, image.width, image.height))
        if self.train:
            sample = transforms.train_transform(sample, self.image_size, generator(self.seed, self.epoch, index))
        else:
            sample = transforms.val_transform(sample, self.image_size)
        pixels, target = transforms.to_model_inputs(sample)
        target["image_id"] = torch.tensor(record["id"])
        target["orig_size"] = torch.tensor([image.height, image.width])
        return pixels, target


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> dict[str, Any]:
    """Pad images to the batch's largest height and width; pixel_mask is 1 on real pixels, 0 on padding."""
    images, targets = zip(*batch, strict=True)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    pixel_values = torch.zeros(len(images), 3, height, width)
    pixel_mask = torch.zeros(len(images), height, width, dtype=torch.int64)
    for n, image in enumerate(images):
        pixel_values[n, :, : image.shape[1], : image.shape[2]] = image
        pixel_mask[n, : image.shape[1], : image.shape[2]] = 1
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": list(targets)}
