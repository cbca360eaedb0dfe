"""Detection augmentations move boxes with the pixels, and DETR's targets are normalised cx, cy, w, h."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from trainer.detr import transforms


def _image_with_box(width: int = 80, height: int = 60) -> transforms.Sample:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[10:30, 5:25] = 255  # white block at x 5..25, y 10..30
    return Image.fromarray(pixels), torch.tensor([[5.0, 10.0, 25.0, 30.0]]), torch.tensor([2])


def _white_extent(image: Image.Image) -> list[float]:
    mask = np.asarray(image.convert("L")) > 127
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_hflip_moves_box_with_pixels() -> None:
    image, boxes, _ = transforms.hflip(_image_with_box())
    assert boxes.tolist() == [[55.0, 10.0, 75.0, 30.0]]
    assert _white_extent(image) == boxes[0].tolist()


def test_resize_keeps_aspect_and_caps_longer_side() -> None:
    image, boxes, _ = transforms.resize(_image_with_box(), shorter=120, max_size=1000)
    assert image.size == (160, 120)
    assert boxes.tolist() == [[10.0, 20.0, 50.0, 60.0]]
    capped, _, _ = transforms.resize(_image_with_box(), shorter=120, max_size=140)
    assert max(capped.size) <= 140 and capped.size[0] / capped.size[1] == 4 / 3


def test_random_crop_clips_and_drops_boxes() -> None:
    generator = torch.Generator().manual_seed(0)
    kept = dropped = 0
    for _ in range(30):
        image, boxes, labels = transforms.random_crop(_image_with_box(), 20, 40, generator)
        assert 20 <= image.width <= 40 and 20 <= image.height <= 40
        assert len(boxes) == len(labels)
        if len(boxes):
            kept += 1
            assert _white_extent(image) == boxes[0].tolist()
        else:
            dropped += 1
            assert np.asarray(image).max() == 0
    assert kept and dropped


def test_train_transform_is_a_function_of_the_generator_seed() -> None:
    def run(seed: int) -> tuple[tuple[int, int], list[list[float]]]:
        image, boxes, _ = transforms.train_transform(_image_with_box(), 64, torch.Generator().manual_seed(seed))
        return image.size, boxes.tolist()

    assert run(3) == run(3)
    assert len({str(run(seed)) for seed in range(8)}) > 1


def test_model_inputs_are_normalised_centre_boxes() -> None:
    pixels, target = transforms.to_model_inputs(_image_with_box())
    assert pixels.shape == (3, 60, 80)
    expected = torch.tensor([[15 / 80, 20 / 60, 20 / 80, 20 / 60]])
    assert torch.allclose(target["boxes"], expected)
    assert target["class_labels"].tolist() == [2]
    white = torch.tensor([(1 - m) / s for m, s in zip(transforms.MEAN, transforms.STD, strict=True)])
    assert torch.allclose(pixels[:, 15, 15], white, atol=1e-5)
