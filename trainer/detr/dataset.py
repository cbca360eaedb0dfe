"""COCO-format detection data from any fsspec URL: `<coco_path>/{train,val}2017/` + `annotations/`.

Crowd annotations are left out of training targets (as DETR does); COCOeval still sees them in the
ground truth. Class labels are COCO category ids as they are (DETR's convention: 91 classes for COCO),
so predictions need no mapping back.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import torch
from PIL import Image, ImageOps

from trainer import storage
from trainer.detr import transforms
from trainer.errors import UserError
from trainer.seeding import generator

SHOWN_EXAMPLES = 3  # entries quoted in a refusal; the count says how many more
# The fields (and their JSON types) of each COCO list that training and evaluation read.
RECORD_FIELDS: dict[str, dict[str, type]] = {
    "images": {"id": int, "file_name": str},
    "annotations": {"image_id": int, "category_id": int, "bbox": list},
    "categories": {"id": int},
}


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
    if not isinstance(document, dict):
        raise UserError(f"{url} holds a JSON {type(document).__name__}, not an object with images, annotations "
                        "and categories lists; pass COCO-format instance annotations")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise UserError(f"{url} has no '{key}' list; pass COCO-format instance annotations")
    if not document["images"]:
        raise UserError(f"{url} lists no images; the {split} split must not be empty")
    return document


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_box(value: list[Any]) -> bool:
    """COCO's [x, y, width, height]: four finite numbers, width and height not negative."""
    return len(value) == 4 and all(map(_is_number, value)) and value[2] >= 0 and value[3] >= 0


def _has_fields(entry: Any, fields: dict[str, type]) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(name), kind) and not isinstance(entry.get(name), bool) for name, kind in fields.items())


def _refuse_any(url: str, bad: list[str], total: int, what: str, fix: str) -> None:
    """One line for all the entries in `bad` (their count and the first few), when there is any."""
    if bad:
        raise UserError(f"{url}: {len(bad)} of {total} {what} (e.g. {'; '.join(bad[:SHOWN_EXAMPLES])}); {fix}")


def _files_under(folder: str) -> set[str]:
    """Every file below `folder`, as paths relative to it: one listing, not one request per image."""
    fs, root = storage.filesystem(folder)
    root = root.rstrip("/")
    found = storage.with_retries(lambda: fs.find(root), f"listing {folder}")
    return {path[len(root) + 1:] for path in found if path.startswith(root + "/")}


def check_annotations(document: dict[str, Any], coco_path: str, split: str) -> None:
    """Refuse, before any training, what would fail mid-run: entries without their fields, boxes that are
    not [x, y, w, h], unknown category or image ids, and listed images missing on disk."""
    url = annotations_url(coco_path, split)
    for key, fields in RECORD_FIELDS.items():
        wanted = ", ".join(f"{name} ({kind.__name__})" for name, kind in fields.items())
        _refuse_any(url, [f"entry {n}: {str(entry)[:80]}" for n, entry in enumerate(document[key])
                          if not _has_fields(entry, fields)],
                    len(document[key]), f"'{key}' entries are not objects with {wanted}",
                    "pass COCO-format instance annotations")
    objects = document["annotations"]
    categories = {category["id"] for category in document["categories"]}
    image_ids = {image["id"] for image in document["images"]}
    _refuse_any(url, [f"annotation {a.get('id')}: {a['bbox']}" for a in objects if not _is_box(a["bbox"])],
                len(objects), "annotations have a bbox that is not [x, y, width, height] (4 finite numbers, "
                "width and height >= 0)", "fix or remove them")
    _refuse_any(url, [f"annotation {a.get('id')}: {a['category_id']}" for a in objects
                      if a["category_id"] not in categories],
                len(objects), f"annotations have a category_id not among the categories {sorted(categories)}",
                "fix them or add their categories")
    _refuse_any(url, [f"annotation {a.get('id')}: {a['image_id']}" for a in objects if a["image_id"] not in image_ids],
                len(objects), "annotations have an image_id not among the images", "fix them or list their images")
    folder = storage.join(coco_path, f"{split}2017")
    for image in document["images"]:
        storage.check_relative(image["file_name"], f"{url}: image {image['id']} file_name")
    present = _files_under(folder)
    _refuse_any(url, [image["file_name"] for image in document["images"] if image["file_name"] not in present],
                len(document["images"]), f"listed images are missing under {folder}",
                "copy them there or drop them from the annotations")


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
        url = storage.child_url(storage.join(self.coco_path, f"{self.split}2017"), record["file_name"],
                                f"{annotations_url(self.coco_path, self.split)}: image {record['id']} file_name")
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
