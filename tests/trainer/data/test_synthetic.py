from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from trainer.data.synthetic import MAX_CLASSES, TEXTURES, class_names, make_generated, make_shapes
from trainer.errors import UserError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_layout_counts_and_image_format(shapes_dir: Path) -> None:
    for split, per_class in (("train", 16), ("val", 8)):
        classes = sorted(p.name for p in (shapes_dir / split).iterdir())
        assert classes == sorted(class_names(4))
        for name in classes:
            files = sorted((shapes_dir / split / name).iterdir())
            assert len(files) == per_class
            with Image.open(files[0]) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_shapes(str(tmp_path / name), num_classes=2, train_per_class=3, val_per_class=1, image_size=24,
                    seed=seed)
    first, again, other = (_files(tmp_path / name) for name in "abc")
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[key] != other[key] for key in first)


def test_raw_pixels_do_not_reveal_the_class(shapes_dir: Path) -> None:
    """Nuisances dominate pixel statistics: 1-NN on raw pixels stays near chance (0.25 for 4 classes)."""

    def pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
        features, labels = [], []
        for label, folder in enumerate(sorted((shapes_dir / split).iterdir())):
            for path in sorted(folder.iterdir()):
                x = np.asarray(Image.open(path), dtype=np.float32).ravel()
                x -= x.mean()
                features.append(x / np.linalg.norm(x))
                labels.append(label)
        return np.stack(features), np.array(labels)

    train_x, train_y = pixels("train")
    val_x, val_y = pixels("val")
    accuracy = (train_y[(val_x @ train_x.T).argmax(1)] == val_y).mean()
    assert accuracy < 0.5


def test_writes_to_s3(s3_server, tmp_path: Path) -> None:
    url = s3_server.bucket("synthetic") + "/shapes"
    make_shapes(url, num_classes=3, train_per_class=2, val_per_class=1, image_size=16, seed=1)
    make_shapes(str(tmp_path), num_classes=3, train_per_class=2, val_per_class=1, image_size=16, seed=1)
    fs = fsspec.filesystem("s3", endpoint_url=s3_server.endpoint)
    remote = {key.split("/shapes/", 1)[1]: fs.cat_file(key) for key in fs.find("synthetic/shapes")}
    assert remote == _files(tmp_path)
    assert len(remote) == 9


@pytest.mark.parametrize("num_classes", [1, MAX_CLASSES + 1])
def test_class_count_out_of_range_is_a_user_error(tmp_path: Path, num_classes: int) -> None:
    with pytest.raises(UserError, match="--num_classes"):
        make_shapes(str(tmp_path), num_classes=num_classes)


def test_textures_layout_determinism_and_class_bound(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_generated("textures", str(tmp_path / name), num_classes=len(TEXTURES), train_per_class=2,
                       val_per_class=1, image_size=20, seed=seed)
    first, again, other = (_files(tmp_path / name) for name in "abc")
    assert first == again and first.keys() == other.keys()
    assert all(first[key] != other[key] for key in first)
    assert sorted({key.split("/")[1] for key in first}) == sorted(TEXTURES)
    assert len(first) == 3 * len(TEXTURES)
    with Image.open(tmp_path / "a" / "val" / "waves" / "00000.jpg") as image:
        assert (image.mode, image.size) == ("RGB", (20, 20))
    with pytest.raises(UserError, match="--num_classes between 2 and 6"):
        make_generated("textures", str(tmp_path / "d"), num_classes=len(TEXTURES) + 1)


def test_unknown_generated_kind_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="builtin:shapes, builtin:textures"):
        make_generated("clouds", str(tmp_path))
