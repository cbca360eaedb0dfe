"""What a step needs from its images, checked before any job starts (the pipeline's check step): the splits it
reads, and for a semi-supervised step at least one labelled image per class.

A staged dataset is checked from its manifest alone (one small read: splits, counts per class), never by listing
its shards. A plain ImageFolder tree is checked by one listing of its root (train/ and val/ there); its class
counts would need a listing of every image, so they are not checked (a note says so). A WebDataset shard set is
not checked: its splits are found when the step opens it. (DETR's COCO annotations are checked by `detr`'s own
check.)
"""

from __future__ import annotations

import math

from trainer.data.layout import probe
from trainer.data.readers import read_manifest
from trainer.errors import UserError

FIX_SPLIT = ("stage a source that holds train/ and val/ (e.g. the ImageNet root, not its train/ folder; "
             "builtin data: --val_images_per_class above 0)")


def check_images(url: str, splits: tuple[str, ...], labels_percent: int | None = None) -> list[str]:
    """Raise UserError (one line) for the first thing the step would fail on in `url`: a split it reads that
    is missing or empty, a class without any training image for a labelled share. Returns notes: what was not
    checked, what a user should know (a share that rounds to under one image per class)."""
    layout = probe(url)
    url = layout.url
    if layout.kind == "staged":
        return _check_staged(url, splits, labels_percent)
    if layout.kind in ("shards", "tar", "tar-folders"):
        return [f"{url} is a WebDataset shard set: its splits are not checked before the step opens it"]
    for split in splits:
        layout.folder(split)  # its refusal says which folder to pass
    return [f"{url} is not a staged dataset: its class counts are not checked (stage it to have them checked)"] \
        if labels_percent else []


def _check_staged(url: str, splits: tuple[str, ...], labels_percent: int | None) -> list[str]:
    manifest = read_manifest(url)
    present = manifest["splits"]
    for split in splits:
        if split not in present:
            raise UserError(f"staged dataset {url} has no {split!r} split (it has: {', '.join(present) or 'none'}); "
                            f"{FIX_SPLIT}")
        if not present[split].get("count"):
            raise UserError(f"the {split!r} split of staged dataset {url} is empty; {FIX_SPLIT}")
    if not labels_percent:
        return []
    return labelled_share(url, manifest["classes"], present["train"].get("class_counts"), labels_percent)


def labelled_share(url: str, classes: list[str], counts: list[int] | None, percent: int) -> list[str]:
    """eval-semisup's class-balanced draw (trainer/evaluation/subsets.py: round(percent % of the images / classes)
    per class, at least one) needs an image of every class; a share under one per class is said."""
    if not counts or len(counts) != len(classes):
        return [f"{url}: the manifest has no per-class counts: the {percent}% labelled share is not checked"]
    empty = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if empty:
        raise UserError(f"{len(empty)} of {len(classes)} classes have no training image in {url} (e.g. "
                        f"{', '.join(map(repr, empty[:3]))}), so the {percent}% labelled share holds none of them; "
                        "add training images of every class, or leave those classes out, and stage again")
    total = sum(counts)
    if round(percent / 100 * total / len(classes)) >= 1:
        return []
    needed = math.floor(50 * len(classes) / percent) + 1
    return [f"{percent}% of the {total} training images in {url} is under one per class for {len(classes)} "
            f"classes: the step labels one image per class ({len(classes)}, {100 * len(classes) / total:.1f}% of "
            f"the images); {needed} training images or more give {percent}%"]
