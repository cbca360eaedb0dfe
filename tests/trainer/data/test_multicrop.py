import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.multicrop import (
    CropSpec,
    GeometricMultiCrop,
    MultiCropDataset,
    SeedStyleTransform,
    crop_specs,
    random_resized_box,
)
from trainer.data.sources import open_source


def test_crop_specs_expand_in_order():
    specs = crop_specs([2, 3], [32, 16], [0.3, 0.05], [1.0, 0.3])
    assert [s.size for s in specs] == [32, 32, 16, 16, 16]
    assert specs[2] == CropSpec(16, 0.05, 0.3)


def test_random_resized_box_area_within_scale():
    rng = np.random.default_rng(0)
    spec = CropSpec(96, 0.05, 0.14)
    fractions = []
    for _ in range(500):
        left, top, w, h = random_resized_box(500, 375, spec, rng)
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
        fractions.append(w * h / (500 * 375))
    assert 0.045 < min(fractions) and max(fractions) < 0.15


def test_dataset_crops_are_uint8_deterministic_per_epoch_and_rank(shapes_dir):
    source = open_source(str(shapes_dir), split="train")
    specs = crop_specs([2, 2], [32, 16], [0.3, 0.1], [1.0, 0.3])
    dataset = MultiCropDataset(source, specs, seed=3, rank=0)
    crops, skipped = dataset[(0, 5)]
    assert skipped == 0
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    assert all(c.dtype == torch.uint8 for c in crops)
    assert all(torch.equal(a, b) for a, b in zip(crops, dataset[(0, 5)][0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(crops, dataset[(1, 5)][0], strict=True))
    other_rank = MultiCropDataset(source, specs, seed=3, rank=1)
    assert not all(torch.equal(a, b) for a, b in zip(crops, other_rank[(0, 5)][0], strict=True))


def test_draft_decoding_matches_full_decode_closely(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (30, 40, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 1200x1600
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    specs = [CropSpec(32, 0.5, 1.0)]

    def crops(use_draft):
        image = Image.open(tmp_path / "big.jpg")
        return GeometricMultiCrop(specs, use_draft=use_draft)(image, np.random.default_rng(1))[0]

    fast, full = crops(True), crops(False)
    assert fast.shape == full.shape == (3, 32, 32)
    assert (fast.float() - full.float()).abs().mean() < 12


def test_seed_style_path_outputs_normalised_floats(shapes_dir):
    source = open_source(str(shapes_dir), split="train")
    dataset = MultiCropDataset(source, crop_specs([2], [24], [0.3], [1.0]), seed=0, rank=0,
                               device_photometric=False)
    crops, _ = dataset[(0, 0)]
    assert crops[0].dtype == torch.float32 and crops[0].shape == (3, 24, 24)
    assert crops[0].min() < 0  # normalised
    assert torch.equal(crops[0], dataset[(0, 0)][0][0])
    assert isinstance(SeedStyleTransform(crop_specs([2], [24], [0.3], [1.0])), SeedStyleTransform)


@pytest.mark.parametrize("bad", [b"", b"not an image at all"])
def test_bad_file_is_replaced_by_next_sample(tmp_path, bad):
    for i in range(3):
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.new("RGB", (40, 40), (i * 80, 0, 0)).save(tmp_path / "c" / f"{i}.jpg")
    (tmp_path / "c" / "0.jpg").write_bytes(bad)
    source = open_source(str(tmp_path))
    dataset = MultiCropDataset(source, crop_specs([2], [16], [0.5], [1.0]), seed=0, rank=0)
    bad_index = [i for i in range(len(source)) if source.name(i).endswith("0.jpg")][0]
    crops, skipped = dataset[(0, bad_index)]
    assert crops[0].shape == (3, 16, 16)
    assert skipped == 1 and source.skipped == 1
