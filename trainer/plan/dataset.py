"""What the plan needs to know about the training data: images, classes, bytes and shards.

A staged dataset's manifest holds all of it (one small read, no listing). Any other --data_path is opened as
the trainer opens it (a listing) when `listing` is allowed; without a --data_path the plan assumes ImageNet
and says so.
"""

from __future__ import annotations

import math
from typing import Any

from trainer import storage
from trainer.plan.recipe import IMAGENET_CLASSES, IMAGENET_IMAGES

IMAGENET_IMAGE_BYTES = 110_000  # ~110 KB an ImageNet training JPEG on average (README, data section)
SHARD_BYTES = 256 * 2**20  # `unmix-swav stage --shard_size_mb` default


def imagenet(why: str) -> dict[str, Any]:
    total = IMAGENET_IMAGES * IMAGENET_IMAGE_BYTES
    return {"images": IMAGENET_IMAGES, "classes": IMAGENET_CLASSES, "bytes": total,
            "shards": math.ceil(total / SHARD_BYTES), "staged": False,
            "source": f"ImageNet assumed ({why}): {IMAGENET_IMAGES:,} images, {IMAGENET_CLASSES:,} classes, "
                      f"~110 KB an image, shards of the staging default 256 MiB"}


def dataset_info(data_path: str | None, listing: bool = True) -> dict[str, Any]:
    """images, classes, bytes, shards, staged, source (a sentence) of the train split at `data_path`."""
    if not data_path:
        return imagenet("no --data_path")
    from trainer.data.sources import MANIFEST, open_source, read_manifest

    url = data_path.rstrip("/")
    if storage.exists(storage.join(url, MANIFEST)):
        manifest = read_manifest(url)
        split = manifest["splits"].get("train") or next(iter(manifest["splits"].values()))
        shards = split.get("shards", [])
        return {"images": int(split["count"]), "classes": len(manifest["classes"]),
                "bytes": sum(int(shard["size"]) for shard in shards), "shards": len(shards), "staged": True,
                "source": f"{url}: staged manifest (no listing)"}
    if not listing:
        return imagenet(f"{url} is not a staged dataset and was not listed")
    source = open_source(url)
    images = len(source)
    total = images * IMAGENET_IMAGE_BYTES
    return {"images": images, "classes": len(source.classes), "bytes": total,
            "shards": math.ceil(total / SHARD_BYTES), "staged": False,
            "source": f"{url}: listed ({images:,} images); bytes and shards assume ~110 KB an image staged in "
                      "256 MiB shards"}
