from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from planted import PLANTED_BAD, PLANTED_IGNORED

from trainer import env
from trainer.data.decode import BadImage, decode, to_rgb
from trainer.data.sources import FolderSource, open_source
from trainer.errors import UserError


def _index_of(source, name: str) -> int:
    return [source.name(i) for i in range(len(source))].index(name)


def test_folder_decodes_every_kind_of_file_and_skips_bad_ones(planted_folder: Path, caplog) -> None:
    source = open_source(str(planted_folder))
    assert isinstance(source, FolderSource)
    assert source.classes == ["cats", "dogs"]
    assert set(source.ignored) == PLANTED_IGNORED
    names = [source.name(i) for i in range(len(source))]
    assert "dogs/chien_\u00e9t\u00e9_\u72ac.jpg" in names
    assert [source.targets[i] for i in range(len(source))] == [n.startswith("dogs/") for n in names]

    with caplog.at_level(logging.WARNING, logger="trainer.data.sources"):
        images = {name: source.load(i) for i, name in enumerate(names)}
        source.load(_index_of(source, "cats/empty.jpg"))  # a second failure is counted once, not re-logged
    assert {name for name, image in images.items() if image is None} == PLANTED_BAD
    assert source.skipped == len(PLANTED_BAD)
    assert set(source.bad_files()) == PLANTED_BAD
    assert "decompression-bomb" in source.bad_files()["dogs/huge.png"]
    assert sum("empty.jpg" in record.getMessage() for record in caplog.records) == 1
    assert all(image.mode == "RGB" for image in images.values() if image is not None)

    assert images["cats/rgb.jpg"].size == (40, 24)
    assert images["cats/rotated.jpg"].size == (24, 40)  # EXIF orientation applied
    assert images["dogs/palette.png"].getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert images["dogs/alpha.png"].getpixel((0, 0)) == (255, 255, 255)
    sixteen = np.asarray(images["dogs/sixteen.png"])[..., 0]
    assert sixteen.min() == 0 and sixteen.max() == 255  # full 16-bit range scaled, not clipped to white
    cmyk = np.asarray(images["cats/cmyk.jpg"], dtype=np.float32)
    assert np.abs(cmyk - np.asarray(images["cats/rgb.jpg"], dtype=np.float32)).mean() < 12


def test_jpeg_draft_decodes_at_reduced_scale(shapes_dir: Path) -> None:
    source = open_source(str(shapes_dir))
    assert source.decode_with(0, lambda image: to_rgb(image, (16, 16))).size == (16, 16)  # half of 32 px
    assert source.load(0, draft_size=(16, 16)).size == (16, 16)
    assert source.load(0).size == (32, 32)


def test_to_rgb_reports_truncated_data() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG")
    cut = encoded.getvalue()[: len(encoded.getvalue()) // 2]  # header intact, pixel data cut off
    with pytest.raises(BadImage, match="truncated or corrupt"):
        decode(cut, env.parse({}).max_image_pixels)
    with pytest.raises(BadImage, match="truncated or corrupt"):
        to_rgb(Image.open(io.BytesIO(cut)))


def test_splits_of_a_folder_holding_train_and_val(shapes_dir: Path) -> None:
    train, val = open_source(str(shapes_dir)), open_source(str(shapes_dir), split="val")
    assert (len(train), len(val)) == (4 * 16, 4 * 8)
    assert train.classes == val.classes
    assert np.bincount(val.targets).tolist() == [8, 8, 8, 8]
    single_tree = str(shapes_dir / "train")
    assert len(open_source(single_tree)) == 64
    with pytest.raises(UserError, match="val/"):
        open_source(single_tree, split="val")


def test_missing_or_empty_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("no images")
    with pytest.raises(UserError, match="no images"):
        open_source(str(tmp_path / "empty"))


def test_sources_survive_pickling(shapes_dir: Path) -> None:
    source = open_source(str(shapes_dir))
    source.load(3)
    clone = pickle.loads(pickle.dumps(source))
    assert np.array_equal(np.asarray(clone.load(3)), np.asarray(source.load(3)))
    assert clone.classes == source.classes and clone.targets == source.targets
