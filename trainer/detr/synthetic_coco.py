"""A generated COCO-format detection set (shapes with boxes) for tests and the demo.

Layout, as the real COCO 2017 release: `train2017/*.jpg`, `val2017/*.jpg` and
`annotations/instances_{train,val}2017.json`, written through fsspec so `dest_url` may be object storage.
Every image holds 1-3 non-overlapping shapes (square, disc, triangle) of random colour and size on a noisy
background; each box is the exact pixel extent of its shape. Images are a pure function of (seed, split, n).
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
from PIL import Image, ImageDraw

from trainer import storage
from trainer.errors import UserError
from trainer.seeding import derive_seed

CATEGORIES = [{"id": 1, "name": "square", "supercategory": "shape"},
              {"id": 2, "name": "disc", "supercategory": "shape"},
              {"id": 3, "name": "triangle", "supercategory": "shape"}]
MAX_OBJECTS = 3
PLACEMENT_TRIES = 20
JPEG_QUALITY = 92
SPLIT_CODES = {"train": 0, "val": 1}
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels


def _overlaps(box: Box, others: list[Box]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def _draw_shape(draw: ImageDraw.ImageDraw, category_id: int, box: Box, colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if category_id == 1:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif category_id == 2:
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)


def render(image_size: int, rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, Box]]]:
    """One image and its objects as (category id, box); boxes never overlap."""
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 12, size=(image_size, image_size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, Box]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _ in range(PLACEMENT_TRIES):
            width, height = (int(v) for v in rng.integers(image_size // 6, image_size // 2 + 1, size=2))
            x0 = int(rng.integers(0, image_size - width + 1))
            y0 = int(rng.integers(0, image_size - height + 1))
            box = (x0, y0, x0 + width, y0 + height)
            if not _overlaps(box, [b for _, b in objects]):
                break
        else:
            continue
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        # Far from the background colour so every shape is visible.
        colour = tuple(int(v) for v in (background + 128 + rng.integers(-40, 41, size=3)) % 256)
        _draw_shape(draw, category_id, box, colour)
        objects.append((category_id, box))
    return image, objects


def _split(dest_url: str, split: str, count: int, image_size: int, seed: int) -> None:
    images, annotations = [], []
    for n in range(count):
        rng = np.random.default_rng(derive_seed(seed, SPLIT_CODES[split], n))
        image, objects = render(image_size, rng)
        image_id = n + 1
        file_name = f"{image_id:012d}.jpg"
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        storage.atomic_write_bytes(storage.join(dest_url, f"{split}2017", file_name), buffer.getvalue())
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for category_id, (x0, y0, x1, y1) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    document = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    storage.write_text(storage.join(dest_url, "annotations", f"instances_{split}2017.json"), json.dumps(document))


def make_shapes_coco(dest_url: str, train_images: int = 64, val_images: int = 16, image_size: int = 96,
                     seed: int = 0) -> None:
    """Write a COCO-format detection set of generated shapes under `dest_url` (any fsspec URL)."""
    if train_images < 1 or val_images < 1:
        raise UserError(f"train_images={train_images}, val_images={val_images}: both splits need >= 1 image")
    if image_size < 32:
        raise UserError(f"image_size={image_size} is too small for visible shapes; use 32 or more")
    storage.makedirs(dest_url)
    for split, count in (("train", train_images), ("val", val_images)):
        _split(dest_url, split, count, image_size, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a generated COCO-format shapes detection set")
    parser.add_argument("dest_url")
    parser.add_argument("--train_images", type=int, default=64)
    parser.add_argument("--val_images", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_shapes_coco(args.dest_url, args.train_images, args.val_images, args.image_size, args.seed)


if __name__ == "__main__":
    main()
