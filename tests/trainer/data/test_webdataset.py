"""WebDataset interop: staged shards read by `webdataset` and `wids` themselves; WebDataset shard sets (a folder,
a brace pattern, a wids index; local and on moto's S3 server) read directly and staged; tar folders told
apart by content; the previous staged format keeps loading; staging reuses what is already staged.

Unit-sized: 32 px images, a few dozen samples; the S3 tests use the session's moto server.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
import wids
from indexed_pixels import rank_loader
from previous_format import PREVIOUS_FORMAT, write_previous_format
from tar_members import write_tar

from trainer.cli import main
from trainer.data.layout import split_member
from trainer.data.sampler import ResumableSampler
from trainer.data.shard_writer import sample_keys
from trainer.data.sources import FolderSource, StagedSource, open_source
from trainer.data.staging import stage_dataset
from trainer.data.wds import ShardList, WebDatasetSource, assign_splits
from trainer.errors import UserError

SMALL_SHARD_MB = 12 * 1024 / 2**20  # a dozen 32 px JPEGs per shard
TINY_PRETRAIN = ["--preset", "demo_cpu", "--nmb_crops", "2", "--size_crops", "32", "--min_scale_crops", "0.3",
                 "--max_scale_crops", "1", "--batch_size", "8", "--workers", "0", "--nmb_prototypes", "20",
                 "--max_steps", "2", "--log_freq", "1"]


def _quiet(message: str) -> None:
    pass


@pytest.fixture(autouse=True)
def index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Indexes of shard sets read directly go to the test's own folder, not ~/.cache."""
    monkeypatch.setenv("UNMIX_INDEX_CACHE", str(tmp_path / "index-cache"))
    return tmp_path / "index-cache"


def _by_name(source) -> dict[str, tuple[str, np.ndarray]]:
    """Name -> (class name, pixels) of every sample."""
    return {source.name(i): (source.classes[source.targets[i]], np.asarray(source.load(i)))
            for i in range(len(source))}


def _same_samples(source, folder: FolderSource, class_names: dict[str, str] | None = None) -> None:
    """Exactly the folder's images, under their names, with their class and pixels."""
    got, want = _by_name(source), _by_name(folder)
    assert sorted(got) == sorted(want)
    for name, (class_name, pixels) in got.items():
        assert class_name == (class_names or {}).get(want[name][0], want[name][0])
        assert np.array_equal(pixels, want[name][1])


def write_webdataset(folder: FolderSource, out: Path, pattern: str, per_shard: int, with_json: bool = True,
                     extra: dict | None = None) -> list[Path]:
    """The folder's images as WebDataset shards written by webdataset's own TarWriter (`pattern` % number)."""
    paths = []
    names = [folder.name(i) for i in range(len(folder))]
    for start in range(0, len(names), per_shard):
        path = out / (pattern % (start // per_shard))
        path.parent.mkdir(parents=True, exist_ok=True)
        with webdataset.TarWriter(str(path)) as writer:
            for i in range(start, min(start + per_shard, len(names))):
                sample = {"__key__": names[i].replace("/", "_").rsplit(".", 1)[0],
                          "jpg": Path(folder.url, names[i]).read_bytes(), "cls": folder.targets[i]}
                if with_json:
                    sample["json"] = {"filename": names[i], "width": 32}
                writer.write({**sample, **(extra or {}).get(names[i], {})})
        paths.append(path)
    return paths


@pytest.fixture
def wds_folder(shapes_dir: Path, tmp_path: Path) -> Path:
    """builtin:shapes as an imagenet-1k-wds-style folder: shapes-train-000N.tar and shapes-validation-0N.tar."""
    root = tmp_path / "shapes-wds"
    write_webdataset(open_source(str(shapes_dir)), root, "shapes-train-%04d.tar", 20)
    write_webdataset(open_source(str(shapes_dir), split="val"), root, "shapes-validation-%02d.tar", 20)
    return root


def test_keys_follow_the_webdataset_rule() -> None:
    names = ["n01440764/n01440764_10026.JPEG", "cats/001.jpg", "dogs/001.jpg", "dogs/001.png", "x/a.b.c.jpg",
             "x/__init__.jpg", "y/chien_\u00e9t\u00e9.jpg"]
    keys = sample_keys(names)
    assert keys[:4] == ["n01440764_10026", "cats_001", "dogs_001_2", "dogs_001_3"]
    assert keys[4:] == ["a_b_c", "k__init__", "chien__t_"] and len(set(keys)) == len(keys)
    for key in keys:
        assert "." not in key and "/" not in key and not key.startswith("__")
        assert split_member(f"{key}.jpeg") == (key, "jpeg")  # webdataset's own split gives the key back
    assert split_member("__meta__") is None and split_member("a/b.c.JPG") == ("a/b", "c.jpg")


def test_splits_come_from_folder_or_name_and_unclear_ones_are_refused() -> None:
    named = ShardList("set", "/d", ["/d/in1k-train-0000.tar", "/d/in1k-validation-00.tar", "/d/in1k-test-00.tar"])
    assert assign_splits(named) == {"train": [0], "val": [1]}  # test shards left out
    assert assign_splits(ShardList("set", "/d", ["/d/train/a.tar", "/d/val/a.tar"])) == {"train": [0], "val": [1]}
    assert assign_splits(ShardList("set", "/pretrain", ["/pretrain/a-0.tar", "/pretrain/a-1.tar"])) == \
        {"train": [0, 1]}  # no split named: one train split (folders above the set do not count)
    with pytest.raises(UserError, match=r"train/a-val-0.tar names more than one split \(train, val\)"):
        assign_splits(ShardList("set", "/d", ["/d/train/a-val-0.tar"]))
    with pytest.raises(UserError, match="1 shards .* name no split"):
        assign_splits(ShardList("set", "/d", ["/d/a-train-0.tar", "/d/b.tar"]))


@pytest.mark.slow
def test_staged_shards_are_read_by_webdataset_and_wids_sample_for_sample(shapes_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    manifest = stage_dataset(str(shapes_dir), str(dest), shard_size_mb=SMALL_SHARD_MB, workers=2, progress=_quiet)
    assert manifest["format"] == "unmix-swav-staged/2"
    assert (dest / "classes.txt").read_text().splitlines() == manifest["classes"]
    checked = 0
    for split in ("train", "val"):
        ours = open_source(str(dest), split=split)
        assert isinstance(ours, StagedSource) and len(ours.shards) > 2
        expected = {ours.name(i): (ours.targets[i], np.asarray(ours.load(i))) for i in range(len(ours))}
        pattern = str(dest / manifest["splits"][split]["pattern"])
        assert "{" in pattern
        seen = {}
        for sample in webdataset.WebDataset(pattern, shardshuffle=False).decode("rgb8"):
            meta = sample["json"]
            assert (meta["split"], meta["class_name"]) == (split, ours.classes[sample["cls"]])
            label, pixels = expected[meta["filename"]]
            assert sample["cls"] == meta["label"] == label
            assert np.array_equal(sample[wds_image_key(sample)], pixels)
            seen[meta["filename"]] = sample["__key__"]
        assert sorted(seen) == sorted(expected) and len(set(seen.values())) == len(seen)
        by_wids = wids.ShardListDataset(str(dest / manifest["splits"][split]["wids_index"]),
                                        cache_dir=str(tmp_path / "wids-cache"), transformations=lambda s: s)
        assert len(by_wids) == len(ours)
        for i in range(len(by_wids)):
            sample = by_wids[i]
            meta = json.loads(sample[".json"].read())
            assert int(sample[".cls"].read()) == expected[meta["filename"]][0]
            assert seen[meta["filename"]] == sample["__key__"]
        checked += len(seen)
    assert checked == 96


def wds_image_key(sample: dict) -> str:
    return next(key for key in ("jpg", "jpeg", "png") if key in sample)


@pytest.mark.parametrize("classes_file", [None, "classes.txt", "classes.json"])
def test_webdataset_folder_is_read_directly_with_labels(wds_folder: Path, shapes_dir: Path,
                                                        classes_file: str | None) -> None:
    names = ["circle", "square", "star", "triangle"]
    if classes_file == "classes.txt":
        (wds_folder / classes_file).write_text("\n".join(names) + "\n")
    elif classes_file == "classes.json":
        (wds_folder / classes_file).write_text(json.dumps({name: i for i, name in enumerate(names)}))
    rename = None if classes_file else {name: str(i) for i, name in enumerate(names)}
    for split in ("train", "val"):
        source = open_source(str(wds_folder), split=split)
        assert isinstance(source, WebDatasetSource)
        assert source.classes == (names if classes_file else ["0", "1", "2", "3"])
        _same_samples(source, open_source(str(shapes_dir), split=split), rename)
    pattern = open_source(str(wds_folder / "shapes-train-{0000..3}.tar"))
    assert len(pattern) == 64 and len({pattern.shard_of(i) for i in range(64)}) == 4


def test_a_wids_index_and_split_folders_are_read(shapes_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "by-folder"
    write_webdataset(open_source(str(shapes_dir)), root, "train/part-%03d.tar", 16)
    write_webdataset(open_source(str(shapes_dir), split="val"), root, "val/part-%03d.tar", 16)
    (root / "classes.txt").write_text("circle\nsquare\nstar\ntriangle\n")  # beside the split folders
    for split in ("train", "val"):
        _same_samples(open_source(str(root), split=split), open_source(str(shapes_dir), split=split))
    index = {"wids_version": 1, "shardlist": [{"url": f"part-{n:03d}.tar", "nsamples": 16} for n in range(4)]}
    (root / "train" / "index.json").write_text(json.dumps(index))
    _same_samples(open_source(str(root / "train" / "index.json")), open_source(str(shapes_dir)))
    with pytest.raises(UserError, match="no val split"):
        open_source(str(root / "train" / "index.json"), split="val")


def test_bad_samples_are_counted_never_fatal_and_the_set_trains(shapes_dir: Path, tmp_path: Path) -> None:
    folder = open_source(str(shapes_dir))
    broken, unlabelled = folder.name(3), folder.name(5)
    root = tmp_path / "wds"
    write_webdataset(folder, root, "train-%02d.tar", 16, with_json=False,
                     extra={broken: {"jpg": b"\xff\xd8 not a jpeg"}})
    with tarfile.open(root / "train-00.tar") as tar:  # rewrite shard 0 without one sample's .cls
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = unlabelled.replace("/", "_").rsplit(".", 1)[0]
    with tarfile.open(root / "train-00.tar", "w") as tar:
        for member, data in members:
            if member.name != f"{key}.cls":
                tar.addfile(member, io.BytesIO(data))
    source = open_source(str(root))
    assert len(source) == 63 and source.left_out == 1  # the unlabelled sample, reported at open
    assert sum(source.load(i) is None for i in range(len(source))) == 1 and source.skipped == 1
    dump = tmp_path / "run"
    assert main(["pretrain", "--data_path", str(root), "--dump_path", str(dump), *TINY_PRETRAIN]) == 0
    assert torch.load(dump / "checkpoint.pth.tar", weights_only=True)["step"] == 2

    staged = tmp_path / "staged"
    manifest = stage_dataset(str(root), str(staged), workers=1, max_bad_fraction=0.1, progress=_quiet)
    reasons = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    broken_key = broken.replace("/", "_").rsplit(".", 1)[0]
    assert set(reasons) == {f"{key}.jpg", f"{broken_key}.jpg"} and "no label" in reasons[f"{key}.jpg"]
    assert manifest["classes"] == ["0", "1", "2", "3"] and manifest["splits"]["train"]["count"] == 62
    assert np.bincount(open_source(str(staged)).targets).tolist() == [14, 16, 16, 16]  # circle/00003, 00005 out
    dump = tmp_path / "run-staged"
    assert main(["pretrain", "--data_path", str(staged), "--dump_path", str(dump), *TINY_PRETRAIN]) == 0
    assert torch.load(dump / "checkpoint.pth.tar", weights_only=True)["step"] == 2


@pytest.mark.slow
def test_webdataset_set_stages_with_class_names_and_evaluates(wds_folder: Path, shapes_dir: Path,
                                                              tmp_path: Path) -> None:
    (wds_folder / "classes.txt").write_text("circle\nsquare\nstar\ntriangle\n")
    dest = tmp_path / "staged"
    assert main(["stage", "--source", str(wds_folder), "--dest", str(dest), "--workers", "2",
                 "--shard_size_mb", str(SMALL_SHARD_MB)]) == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["classes"] == ["circle", "square", "star", "triangle"]
    assert (manifest["splits"]["train"]["count"], manifest["splits"]["val"]["count"]) == (64, 32)
    for split in ("train", "val"):
        _same_samples(open_source(str(dest), split=split), open_source(str(shapes_dir), split=split))
    dump = tmp_path / "knn"
    assert main(["eval-knn", "--data_path", str(wds_folder), "--dump_path", str(dump), "--arch", "resnet_tiny",
                 "--device", "cpu", "--workers", "0", "--image_size", "32"]) == 0
    assert "top1" in (dump / "metrics.json").read_text()



def test_tar_folders_are_told_apart_by_content_and_ambiguous_ones_refused(shapes_dir: Path, tmp_path: Path,
                                                                          capsys) -> None:
    image = next((shapes_dir / "train" / "star").iterdir()).read_bytes()
    numbered = tmp_path / "numbered"  # numbered tars of bare images: no labels, and no class in the names
    for n in range(3):
        write_tar(numbered / f"shard-{n:04d}.tar", {f"img{n}_{i}.jpg": image for i in range(2)})
    assert main(["stage", "--source", str(numbered), "--dest", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "numbered tars of unlabelled images" in line and "supported:" in line and "WebDataset" in line

    mixed = tmp_path / "mixed"  # one WebDataset shard next to one per-class tar
    write_tar(mixed / "n01440764.tar", {"a.jpg": image, "b.jpg": image})
    write_tar(mixed / "n01443537.tar", {"c.jpg": image, "c.cls": b"1"})
    with pytest.raises(UserError, match=r"1 class .*1 webdataset .*supported:") as refusal:
        stage_dataset(str(mixed), str(tmp_path / "out"), progress=_quiet)
    assert len(str(refusal.value).splitlines()) == 1
    unlabelled = tmp_path / "captions"
    write_tar(unlabelled / "part-0.tar", {"a.jpg": image, "a.txt": b"a star"})
    with pytest.raises(UserError, match="WebDataset shards without labels"):
        open_source(str(unlabelled))

    per_class = tmp_path / "per-class"  # ImageNet's layout: still staged as classes, never read as shards
    write_tar(per_class / "n01440764.tar", {"a.jpg": image, "b.jpg": image})
    write_tar(per_class / "n01443537.tar", {"c.jpg": image})
    manifest = stage_dataset(str(per_class), str(tmp_path / "staged"), workers=1, progress=_quiet)
    assert manifest["classes"] == ["n01440764", "n01443537"]
    with pytest.raises(UserError, match="per-class tars.*stage them first"):
        open_source(str(per_class))


def test_previous_format_keeps_loading_and_is_reused(shapes_dir: Path, tmp_path: Path, capsys) -> None:
    staged = tmp_path / "staged"
    stage_dataset(str(shapes_dir), str(staged), shard_size_mb=SMALL_SHARD_MB, workers=1, progress=_quiet)
    old = tmp_path / "old"
    write_previous_format(str(staged), str(old))
    with tarfile.open(next((old / "train").glob("train-*.tar"))) as tar:
        assert all("/" in name and not name.endswith(".cls") for name in tar.getnames())
    for split in ("train", "val"):
        source = open_source(str(old), split=split)
        assert isinstance(source, StagedSource) and source.format == PREVIOUS_FORMAT
        _same_samples(source, open_source(str(shapes_dir), split=split))
    assert main(["stage", "--source", str(old), "--dest", str(old)]) == 0
    assert "its shards carry no WebDataset labels" in capsys.readouterr().err


def test_stage_reuses_a_staged_source_and_a_complete_dest(tmp_path: Path, capsys) -> None:
    dest = tmp_path / "textures"
    argv = ["stage", "--source", "builtin:textures", "--dest", str(dest), "--num_classes", "3",
            "--images_per_class", "8", "--image_size", "32", "--workers", "1"]
    started = time.monotonic()
    assert main(argv) == 0
    first = time.monotonic() - started
    manifest = (dest / "manifest.json").read_text()
    capsys.readouterr()
    started = time.monotonic()
    assert main(argv) == 0
    second = time.monotonic() - started
    assert "stage: reused" in capsys.readouterr().err and second < first
    assert (dest / "manifest.json").read_text() == manifest
    assert main([*argv[:-2], "--workers", "1", "--seed", "1"]) == 0  # other options: staged again
    assert "reused" not in capsys.readouterr().err

    copy = tmp_path / "pointer"
    assert main(["stage", "--source", str(dest), "--dest", str(copy)]) == 0
    assert "reused the staged dataset" in capsys.readouterr().err
    assert not list(copy.glob("*/*.tar"))  # nothing copied: the manifest points at the source's shards
    source, pointer = open_source(str(dest), split="val"), open_source(str(copy), split="val")
    assert [pointer.name(i) for i in range(len(pointer))] == [source.name(i) for i in range(len(source))]
    assert np.array_equal(np.asarray(pointer.load(0)), np.asarray(source.load(0)))
    other = shutil.copytree(dest, tmp_path / "other")  # a real staged dataset is never overwritten by a pointer
    with pytest.raises(UserError, match="already holds another staged dataset"):
        stage_dataset(str(dest), str(other), progress=_quiet)

    shard = next((dest / "train").glob("train-*.tar"))
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different bytes: only sha256 sees it
    shard.write_bytes(bytes(data))
    assert main(["stage", "--source", str(dest), "--dest", str(copy)]) == 0
    assert main(["stage", "--source", str(dest), "--dest", str(copy), "--verify", "sha256"]) == 2
    assert "do not match their manifest sha256" in capsys.readouterr().err
    shard.write_bytes(bytes(data[:1000]))
    assert main(["stage", "--source", str(dest), "--dest", str(copy)]) == 2
    assert "has 1000 bytes" in capsys.readouterr().err


def test_webdataset_on_s3_two_ranks_two_workers_read_every_sample_once(s3_server, shapes_dir: Path,
                                                                       tmp_path: Path) -> None:
    import boto3

    local = tmp_path / "wds"
    shards = write_webdataset(open_source(str(shapes_dir)), local, "shapes-train-%04d.tar", 8)
    bucket = s3_server.bucket("webdataset")
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    for shard in shards:
        client.upload_file(str(shard), "webdataset", f"shapes/{shard.name}")
    client.put_object(Bucket="webdataset", Key="shapes/classes.txt", Body=b"circle\nsquare\nstar\ntriangle\n")
    source = open_source(f"{bucket}/shapes/shapes-train-{{0000..{len(shards) - 1:04d}}}.tar")
    assert isinstance(source, WebDatasetSource) and source.classes[0] == "circle"
    _same_samples(source, open_source(str(shapes_dir)))
    shard_of = [source.shard_of(i) for i in range(len(source))]
    seen: list[int] = []
    for rank in (0, 1):
        rank_seen = []
        for indices, shard_numbers, pixels in rank_loader(source, shard_of, rank, seed=3, batch_size=8):
            assert pixels.shape == (8, 32, 32, 3)
            assert shard_numbers.tolist() == [shard_of[i] for i in indices.tolist()]
            rank_seen += indices.tolist()
        resumed = ResumableSampler(shard_of, rank=rank, world_size=2, seed=3, batch_size=8)
        resumed.set_epoch(0, start_batch=2)  # exact mid-epoch resume: the same tail
        assert [index for _, index in resumed] == rank_seen[16:]
        seen += rank_seen
    assert sorted(seen) == list(range(len(source)))

    dest = f"{bucket}/staged"
    manifest = stage_dataset(f"{bucket}/shapes", dest, shard_size_mb=SMALL_SHARD_MB, workers=2, progress=_quiet)
    assert manifest["classes"] == ["circle", "square", "star", "triangle"]
    _same_samples(open_source(dest), open_source(str(shapes_dir)))
