"""Worker side of multi-crop: decode and the geometric part (random resized crop, flip) on uint8.

Each crop is cut and resized from the decoded image in one PIL call; JPEGs are decoded at a reduced
scale (draft mode) when every crop is much smaller than the image. The photometric part runs batched
on the training device (trainer.data.photometric). `SeedStyleTransform` is the seed's per-image PIL
path, kept for comparison (`--aug_backend pil`).

All randomness comes from a generator seeded from (seed, epoch, index, rank): a sample's crops are the
same whichever worker, process or restart produces them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import transforms

from trainer.data.decode import oriented_size, to_rgb
from trainer.data.readers import ImageSource
from trainer.errors import UserError
from trainer.seeding import derive_seed

log = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)


@dataclass(frozen=True)
class CropSpec:
    size: int
    min_scale: float
    max_scale: float


def crop_specs(nmb_crops: list[int], size_crops: list[int], min_scale_crops: list[float],
               max_scale_crops: list[float]) -> list[CropSpec]:
    """One CropSpec per crop, in the order the crops are fed to the model."""
    return [CropSpec(size, lo, hi)
            for count, size, lo, hi in zip(nmb_crops, size_crops, min_scale_crops, max_scale_crops, strict=True)
            for _ in range(count)]


def random_resized_box(width: int, height: int, spec: CropSpec, rng: np.random.Generator,
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) with torchvision RandomResizedCrop's distribution, drawn from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(spec.min_scale, spec.max_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    # Fallback: the largest centre crop within the ratio bounds, as torchvision does.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class GeometricMultiCrop:
    """Lazily opened image -> list of uint8 (3, size, size) crops with random flips.

    The crop boxes are drawn from the header's size first, so that a JPEG can be decoded at the smallest
    scale that still gives every crop at least its output resolution. Corrupt data raises
    trainer.data.decode.BadImage, from any step.
    """

    def __init__(self, specs: list[CropSpec], use_draft: bool = True):
        self.specs = specs
        self.use_draft = use_draft

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> list[torch.Tensor]:
        width, height = oriented_size(image)
        boxes = [random_resized_box(width, height, spec, rng) for spec in self.specs]
        flips = rng.random(len(self.specs)) < 0.5
        reduction = min(min(w, h) / spec.size for (_, _, w, h), spec in zip(boxes, self.specs, strict=True))
        raw_w, raw_h = image.size
        draft_size = (math.ceil(raw_w / reduction), math.ceil(raw_h / reduction))
        rgb = to_rgb(image, draft_size if self.use_draft and reduction >= 2 else None)
        # (1, 3, H, W) view of the HWC pixels: channels_last, the layout of torch's vectorised uint8
        # antialiased resize (about 3x faster than PIL's per-crop resize, same pixels within 1-3 levels)
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0)
        scale_x, scale_y = rgb.size[0] / width, rgb.size[1] / height
        crops = []
        for (left, top, w, h), spec, flip in zip(boxes, self.specs, flips, strict=True):
            x0, y0 = round(left * scale_x), round(top * scale_y)
            x1, y1 = max(round((left + w) * scale_x), x0 + 1), max(round((top + h) * scale_y), y0 + 1)
            crop = F.interpolate(pixels[..., y0:y1, x0:x1], size=(spec.size, spec.size), mode="bilinear",
                                 antialias=True, align_corners=False)[0]
            crops.append(crop.flip(-1) if flip else crop)
        return crops


class PILGaussianBlur:
    """The seed's PILRandomGaussianBlur: radius uniform in [0.1, 2.0], applied with probability p."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return image
        radius = self.radius_min + (self.radius_max - self.radius_min) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class SeedStyleTransform:
    """The seed's per-image PIL multi-crop (every op in float on the CPU): the comparison baseline."""

    def __init__(self, specs: list[CropSpec], blur_prob: float = 0.5):
        color = transforms.Compose([
            transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        self.pipelines = [transforms.Compose([
            transforms.RandomResizedCrop(spec.size, scale=(spec.min_scale, spec.max_scale)),
            transforms.RandomHorizontalFlip(p=0.5), color, PILGaussianBlur(blur_prob),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD),
        ]) for spec in specs]

    def __call__(self, image: Image.Image, seed: int) -> list[torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return [pipeline(image) for pipeline in self.pipelines]


class MultiCropDataset(Dataset):
    """(epoch, index) -> list of crops. `device_photometric`: uint8 geometric crops for the device side;
    otherwise the seed-style per-image float path."""

    def __init__(self, source: ImageSource, specs: list[CropSpec], seed: int, rank: int,
                 device_photometric: bool = True, blur_prob: float = 0.5):
        self.source = source
        self.seed, self.rank = seed, rank
        self.geometric = GeometricMultiCrop(specs) if device_photometric else None
        self.seed_style = None if device_photometric else SeedStyleTransform(specs, blur_prob)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[torch.Tensor], int]:
        """(crops of sample `index`, number of undecodable files skipped to get them).

        An undecodable file (logged with its path by the source) is replaced by the next decodable one,
        deterministically; the count travels with the batch so the trainer can report the total.
        """
        epoch, index = key
        for offset in range(len(self.source)):
            current = (index + offset) % len(self.source)
            sample_seed = derive_seed(self.seed, epoch, current, self.rank)
            crops = self.source.decode_with(current, partial(self._crops, sample_seed=sample_seed))
            if crops is not None:
                return crops, offset
        raise UserError(f"none of the {len(self.source)} images of {self.source.url} could be decoded (each one "
                        "is logged with its reason); pass a data path holding readable images")

    def _crops(self, image: Image.Image, sample_seed: int) -> list[torch.Tensor]:
        if self.geometric is not None:
            return self.geometric(image, np.random.default_rng(sample_seed))
        return self.seed_style(to_rgb(image), sample_seed)
