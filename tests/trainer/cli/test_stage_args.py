"""`unmix-swav stage`: bad options and a --dest that would hold its own source refused before any work;
a staged manifest.json that is no manifest refused in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from refusal import refused

from trainer.data.sources import open_source
from trainer.data.staging import check_dest_outside
from trainer.errors import UserError

BUILTIN = ["--source", "builtin:shapes"]
# (flags after --dest, what the refusal must name)
BAD_OPTIONS = [
    (["--source", "{source}", "--workers", "-2"], "--workers"),
    (["--source", "{source}", "--seed", "-1"], "--seed"),
    (["--source", "{source}", "--shard_size_mb", "0"], "--shard_size_mb"),
    (["--source", "{source}", "--shard_size_mb", "nan"], "--shard_size_mb"),
    (["--source", "{source}", "--max_bad_fraction", "2"], "--max_bad_fraction"),
    ([*BUILTIN, "--num_classes", "1"], "--num_classes"),
    ([*BUILTIN, "--images_per_class", "0"], "--images_per_class"),
    ([*BUILTIN, "--val_images_per_class", "-1"], "--val_images_per_class"),
    ([*BUILTIN, "--image_size", "8"], "--image_size"),
    (["--source", "{source}/missing"], "--source"),
]


@pytest.fixture
def source(shapes_dir: Path, tmp_path: Path) -> Path:
    """A copy of the shapes folder that a test may stage into (or try to)."""
    return Path(shutil.copytree(shapes_dir, tmp_path / "images"))


@pytest.mark.parametrize(("flags", "named"), BAD_OPTIONS)
def test_bad_option_is_refused(capsys, source: Path, tmp_path: Path, flags: list[str], named: str) -> None:
    dest = tmp_path / "staged"
    argv = ["stage", "--dest", str(dest), *(flag.format(source=source) for flag in flags)]
    refused(capsys, argv, named, [dest, source])


@pytest.mark.parametrize("dest", ["{source}", "{source}/", "{source}/staged", "{source}/train/staged",
                                  "file://{source}/staged", "{source}/../images/staged"])
def test_dest_inside_source_is_refused(capsys, source: Path, dest: str) -> None:
    line = refused(capsys, ["stage", "--source", str(source), "--dest", dest.format(source=source)], "--dest", [source])
    assert "--source" in line


def test_dest_through_a_link_into_source_is_refused(capsys, source: Path, tmp_path: Path) -> None:
    os.symlink(source, tmp_path / "link")
    refused(capsys, ["stage", "--source", str(source), "--dest", str(tmp_path / "link" / "staged")], "--dest", [source])


def test_dest_next_to_source_is_accepted() -> None:
    check_dest_outside("/data/images", "/data/images-staged")  # a shared name prefix is not "inside"
    check_dest_outside("s3://bucket/images", "s3://bucket/staged")
    check_dest_outside("s3://bucket/images", "/bucket/images/staged")  # another store


@pytest.mark.parametrize(("source", "dest"), [("s3://bucket/images", "s3://bucket/images/staged"),
                                              ("s3://bucket/images/", "s3a://bucket/images"),
                                              ("s3://bucket", "s3://bucket/staged")])
def test_dest_inside_source_on_s3_is_refused(source: str, dest: str) -> None:
    with pytest.raises(UserError, match="--dest"):
        check_dest_outside(source, dest)


@pytest.mark.parametrize("manifest", [[1, 2], "staged", {"format": "unmix-swav-staged/1", "complete": True},
                                      {"classes": ["a"], "splits": []}])
def test_manifest_that_is_no_manifest_is_refused(tmp_path: Path, manifest: object) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="re-run unmix-swav stage") as refusal:
        open_source(str(tmp_path))
    assert len(str(refusal.value).splitlines()) == 1 and "manifest.json" in str(refusal.value)


def test_manifest_list_is_refused_by_the_cli(capsys, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("[]")
    dump = tmp_path / "run"
    argv = ["eval-knn", "--data_path", tmp_path / "data", "--dump_path", dump, "--arch", "resnet_tiny",
            "--device", "cpu", "--workers", "0", "--image_size", "32"]
    # params.json is left out: eval-knn writes it before it opens the data
    refused(capsys, argv, "manifest.json", [dump / "checkpoint.pth.tar", dump / "metrics.json"])
