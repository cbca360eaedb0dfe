"""The one layout probe and the one split rule: reading, staging and the preflight see the same thing in a URL."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from tar_members import write_tar

from trainer.data.layout import KINDS, probe, tar_contents
from trainer.data.names import folder_split, split_words
from trainer.data.preflight import check_images
from trainer.data.sources import FolderSource, open_source
from trainer.data.staging import stage_dataset
from trainer.errors import UserError


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path)


def _png() -> bytes:
    encoded = io.BytesIO()
    Image.new("RGB", (8, 8)).save(encoded, format="PNG")
    return encoded.getvalue()


def _tree(root: Path, val_folder: str) -> Path:
    for split, count in (("train", 2), (val_folder, 1)):
        for label in ("cats", "dogs"):
            for number in range(count):
                _image(root / split / label / f"{number}.png", 40 * number)
    return root


def test_probe_tells_each_kind_by_names_and_one_listing(tmp_path: Path) -> None:
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "manifest.json").write_text("{}")
    assert probe(str(tmp_path / "staged" / "manifest.json")).kind == "staged"
    assert probe(str(tmp_path / "shards-{000..003}.tar")).kind == "shards"
    assert probe(str(tmp_path / "index.json")).kind == "shards"
    assert probe(str(tmp_path / "one.tar")).kind == "tar"  # named a tar: its reader says if it is missing
    (tmp_path / "notes.txt").write_text("x")
    assert probe(str(tmp_path / "notes.txt")).kind == "file"
    assert probe(str(tmp_path / "nothing")).kind == "missing"
    single = tmp_path / "single"
    _image(single / "cats" / "0.png", 0)
    assert probe(str(single) + "/").splits == {"train": str(single)}
    tars = tmp_path / "imagenet"
    (tars / "train").mkdir(parents=True)
    (tars / "train" / "n01.tar").write_bytes(b"")
    _image(tars / "val" / "n01" / "0.png", 0)
    layout = probe(str(tars))
    assert layout.kind == "tar-folders" and layout.kind in KINDS
    assert layout.tar_groups == {str(tars / "train"): [str(tars / "train" / "n01.tar")]}
    assert layout.splits == {"train": str(tars / "train"), "val": str(tars / "val")}


def test_one_split_rule_for_folders_and_shard_names() -> None:
    assert [folder_split(name) for name in ("train", "val", "validation", "test", "cats")] == [
        "train", "val", "val", None, None]
    assert split_words("validation/shard-000.tar", ".tar") == {"val"}
    assert split_words("imagenet-train-000.tar", ".tar") == {"train"}
    assert split_words("cats/000.tar", ".tar") == set()


def test_a_validation_folder_is_the_val_split_when_read_staged_and_checked(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", "validation")
    assert probe(str(source)).splits == {"train": str(source / "train"), "val": str(source / "validation")}
    val = open_source(str(source), "val")
    assert isinstance(val, FolderSource) and val.url == str(source / "validation") and len(val) == 2
    assert check_images(str(source), ("train", "val")) == []
    manifest = stage_dataset(str(source), str(tmp_path / "staged"), workers=0, progress=lambda message: None)
    assert {split: info["count"] for split, info in manifest["splits"].items()} == {"train": 4, "val": 2}
    assert len(open_source(str(tmp_path / "staged"), "val")) == 2


def test_a_split_named_by_two_folders_is_refused(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", "validation")
    _image(source / "val" / "cats" / "0.png", 0)
    with pytest.raises(UserError, match="both val/ and validation/"):
        probe(str(source))


def test_a_missing_split_folder_is_refused_naming_what_is_there(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _image(source / "validation" / "cats" / "0.png", 0)
    with pytest.raises(UserError, match=r"has no train/ folder \(it has validation\)"):
        open_source(str(source))
    single = tmp_path / "single"
    _image(single / "cats" / "0.png", 0)
    with pytest.raises(UserError, match="single ImageFolder tree without a val/ folder"):
        open_source(str(single), "val")


def test_shards_in_a_validation_folder_are_the_val_split(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("UNMIX_INDEX_CACHE", str(tmp_path / "index-cache"))
    for split, folder in (("train", "train"), ("val", "validation")):
        write_tar(tmp_path / "set" / folder / "shard-000.tar",
                  {f"{split}{n}.{suffix}": data for n in range(2)
                   for suffix, data in (("png", _png()), ("cls", b"%d" % n))})
    layout = probe(str(tmp_path / "set"))
    assert layout.kind == "tar-folders" and tar_contents(layout, str(tmp_path / "index"), 1, "x")[0] == "webdataset"
    assert len(open_source(str(tmp_path / "set"), "val")) == 2


def test_tar_contents_tells_per_class_tars_from_a_tar_of_class_folders(tmp_path: Path) -> None:
    for name in ("cats", "dogs"):
        write_tar(tmp_path / "imagenet" / "train" / f"{name}.tar", {f"{name}_{n}.png": _png() for n in range(2)})
    contents, indexed = tar_contents(probe(str(tmp_path / "imagenet")), str(tmp_path / "index"), 1, "x")
    assert contents == "class-tars" and len(indexed) == 2
    write_tar(tmp_path / "tree.tar", {f"{name}/{n}.png": _png() for name in ("cats", "dogs") for n in range(2)})
    assert tar_contents(probe(str(tmp_path / "tree.tar")), str(tmp_path / "index"), 1, "x")[0] == "tar-of-images"
    write_tar(tmp_path / "mixed" / "train" / "cats.tar", {"cats_0.png": _png()})
    write_tar(tmp_path / "mixed" / "val" / "shard-000.tar", {"a.png": _png(), "a.cls": b"0"})
    with pytest.raises(UserError, match="--source s mixes WebDataset shards and per-class tars"):
        tar_contents(probe(str(tmp_path / "mixed")), str(tmp_path / "index"), 1, "--source s")
