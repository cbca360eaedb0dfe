"""DETR's detection augmentations, scaled to a chosen shorter side, with boxes kept in step.

The recipe (for shorter side 800): horizontal flip p=0.5, then either a multi-scale resize (shorter side in
480..800 step 32, longer side <= 1333) or, with p=0.5, resize to 400/500/600, a random 384-600 crop and the
same multi-scale resize. Validation: resize to the shorter side. Every size here is the recipe's times
`image_size / 800`. Draws come from the generator passed in, never from global state, so an epoch is
reproducible from (seed, epoch, index). Boxes are (N, 4) x0, y0, x1, y1 in pixels until `to_model_inputs`.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import functional as F

RECIPE_SHORTER_SIDE = 800
RECIPE_MAX_SIZE = 1333
RECIPE_SCALES = tuple(range(480, 801, 32))
RECIPE_CROP_RESIZES = (400, 500, 600)
RECIPE_CROP_RANGE = (384, 600)
# DETR's normalisation (torchvision's ImageNet statistics), as in the transfer recipe.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

Sample = tuple[Image.Image, torch.Tensor, torch.Tensor]  # image, boxes (N, 4) xyxy px, labels (N,)


def _scaled(value: int, image_size: int) -> int:
    return max(1, round(value * image_size / RECIPE_SHORTER_SIDE))


def _choice(options: tuple[int, ...] | list[int], generator: torch.Generator) -> int:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _uniform_int(low: int, high: int, generator: torch.Generator) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def hflip(sample: Sample) -> Sample:
    image, boxes, labels = sample
    width = image.width
    flipped = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([width, 0, width, 0])
    return F.hflip(image), flipped, labels


def output_size(width: int, height: int, shorter: int, max_size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `shorter`, shrunk so the longer side stays <= max_size."""
    short, long = min(width, height), max(width, height)
    if long / short * shorter > max_size:
        shorter = int(round(max_size * short / long))
    if width < height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def resize(sample: Sample, shorter: int, max_size: int) -> Sample:
    image, boxes, labels = sample
    width, height = output_size(image.width, image.height, shorter, max_size)
    scale = torch.tensor([width / image.width, height / image.height] * 2)
    return image.resize((width, height), Image.BILINEAR), boxes * scale, labels


def random_crop(sample: Sample, min_size: int, max_size: int, generator: torch.Generator) -> Sample:
    """A random crop of side lengths in [min_size, max_size]; boxes are clipped, emptied ones dropped."""
    image, boxes, labels = sample
    width = _uniform_int(min(image.width, min_size), min(image.width, max_size), generator)
    height = _uniform_int(min(image.height, min_size), min(image.height, max_size), generator)
    left = _uniform_int(0, image.width - width, generator)
    top = _uniform_int(0, image.height - height, generator)
    shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    clipped = torch.minimum(shifted.clamp(min=0), torch.tensor([width, height, width, height], dtype=boxes.dtype))
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return image.crop((left, top, left + width, top + height)), clipped[keep], labels[keep]


def train_transform(sample: Sample, image_size: int, generator: torch.Generator) -> Sample:
    scales = [_scaled(s, image_size) for s in RECIPE_SCALES]
    max_size = _scaled(RECIPE_MAX_SIZE, image_size)
    if torch.rand((), generator=generator) < 0.5:
        sample = hflip(sample)
    if torch.rand((), generator=generator) < 0.5:
        sample = resize(sample, _scaled(_choice(RECIPE_CROP_RESIZES, generator), image_size), max_size)
        low, high = (_scaled(v, image_size) for v in RECIPE_CROP_RANGE)
        sample = random_crop(sample, low, high, generator)
    return resize(sample, _choice(scales, generator), max_size)


def val_transform(sample: Sample, image_size: int) -> Sample:
    return resize(sample, image_size, _scaled(RECIPE_MAX_SIZE, image_size))


def to_model_inputs(sample: Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Normalised (3, H, W) pixels and transformers' DETR target: class_labels, boxes as cx, cy, w, h in [0, 1]."""
    image, boxes, labels = sample
    pixels = F.normalize(F.to_tensor(image), MEAN, STD)
    size = torch.tensor([image.width, image.height] * 2, dtype=torch.float32)
    x0, y0, x1, y1 = (boxes.float() / size).unbind(-1)
    normalised = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
    return pixels, {"class_labels": labels.long(), "boxes": normalised.reshape(-1, 4)}
