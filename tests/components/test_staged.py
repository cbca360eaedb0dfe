"""Staged data outlive a run: their location derives from the source and the options, a second staging
with the same inputs verifies the manifest and reuses the data in seconds, damage is found. Real staging
of a tiny generated dataset into a local folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.staged import stage_detection, stage_images, staged_location, verify_staged
from trainer.errors import UserError

TINY = ["--num_classes", "2", "--images_per_class", "4", "--val_images_per_class", "2", "--image_size", "16",
        "--workers", "1"]


def test_the_location_depends_on_the_source_and_the_options_only():
    one = staged_location("s3://b/runs", "images", "s3://b/imagenet", ["--shard_size_mb", "256"])
    assert one == staged_location("s3://b/runs", "images", "s3://b/imagenet", ["--shard_size_mb", "256"])
    assert one.startswith("s3://b/runs/staged/images-imagenet-")
    assert one != staged_location("s3://b/runs", "images", "s3://b/imagenet", ["--shard_size_mb", "128"])
    assert one != staged_location("s3://b/runs", "images", "s3://b/imagenet-2012", ["--shard_size_mb", "256"])


@pytest.fixture(scope="module")
def staged_once(tmp_path_factory) -> tuple[Path, str, float]:
    root = tmp_path_factory.mktemp("storage")
    started = time.monotonic()
    url = stage_images(str(root), "builtin:textures", TINY)
    return root, url, time.monotonic() - started


def test_a_second_staging_reuses_the_first_in_seconds(staged_once, capfd):
    root, url, first_s = staged_once
    started = time.monotonic()
    again = stage_images(str(root), "builtin:textures", TINY)
    second_s = time.monotonic() - started
    assert again == url
    assert "reusing" in capfd.readouterr().err
    assert second_s < 5 and second_s < first_s
    assert len(list((root / "staged").iterdir())) == 1  # one staged copy


def test_staged_data_skips_staging_after_verifying(staged_once, capfd):
    root, url, _ = staged_once
    assert stage_images(str(root / "elsewhere"), "ignored", [], staged_data=url) == url
    assert "staging skipped" in capfd.readouterr().err
    assert not (root / "elsewhere").exists()
    with pytest.raises(UserError, match="holds no manifest.json"):
        stage_images(str(root), "ignored", [], staged_data=str(root / "not-staged"))


def test_a_damaged_staged_dataset_is_found(staged_once, tmp_path):
    import shutil

    _, url, _ = staged_once
    copy = tmp_path / "copy"
    shutil.copytree(url, copy)
    verify_staged(str(copy), "builtin:textures")
    with pytest.raises(UserError, match="staged from 'builtin:textures', not 'other'"):
        verify_staged(str(copy), "other")
    shard = next((copy / "train").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="has 100 bytes"):
        verify_staged(str(copy))


def test_generated_detection_data_are_made_once(tmp_path, capfd):
    options = {"train_images": 2, "val_images": 1, "image_size": 32}
    first = stage_detection(str(tmp_path), "builtin:shapes-coco", options)
    assert stage_detection(str(tmp_path), "builtin:shapes-coco", options) == first
    assert "reusing" in capfd.readouterr().err
    assert stage_detection(str(tmp_path), "s3://b/coco", options) == "s3://b/coco"


@pytest.mark.parametrize("storage_root, staged_data, expected", [
    ("s3://CHANGE-ME/runs", "", "error: storage_root is s3://CHANGE-ME/runs, a placeholder"),
    (None, "typo", "holds no manifest.json, so it is no staged dataset"),
])
def test_the_stage_step_refuses_a_bad_value_in_one_line_before_any_work(tmp_path, capfd, storage_root, staged_data,
                                                                        expected):
    """The stage step runs first in the pipeline: the placeholder storage_root (the compiled default) and a
    staged_data that names no staged dataset end it with one line and exit 2 (once a traceback, exit 1),
    before any image is generated or staged."""
    from components.staged import stage_step

    root = storage_root or str(tmp_path / "storage")
    with pytest.raises(SystemExit) as ended:
        stage_step(root, "builtin:shapes", "builtin:shapes-coco", staged_data and str(tmp_path / staged_data), [],
                   {})
    captured = capfd.readouterr()
    assert ended.value.code == 2 and "Traceback" not in captured.err
    (line,) = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert expected in line
    assert "wrote" not in captured.out + captured.err  # nothing generated or staged (the source makes 800 images)
