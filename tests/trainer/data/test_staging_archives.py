from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from tar_members import add_member

import trainer.data.archives as archives
from trainer.cli import main
from trainer.data.sources import StagedSource, open_source
from trainer.data.staging import stage_dataset
from trainer.errors import UserError

SMALL_SHARD_MB = 12 * 1024 / 2**20  # about a dozen 32 px JPEGs per shard, so tests see many shards
TINY_PRETRAIN = ["--preset", "demo_cpu", "--nmb_crops", "2", "2", "--size_crops", "32", "16",
                 "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3", "--batch_size", "8",
                 "--workers", "0", "--nmb_prototypes", "20", "--max_steps", "2", "--log_freq", "1"]


def _quiet(message: str) -> None:
    pass


def _class_tar_bytes(class_dir: Path) -> bytes:
    """ImageNet's per-class layout: one tar per class, members are bare image file names."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for image in sorted(class_dir.iterdir()):
            tar.add(image, arcname=image.name)
    return buffer.getvalue()


def _per_class_tars(shapes_dir: Path, splits: Iterable[str]) -> dict[str, bytes]:
    """Relative path `<split>/<class>.tar` -> tar bytes, for every class of every split."""
    return {f"{split}/{class_dir.name}.tar": _class_tar_bytes(class_dir)
            for split in splits for class_dir in sorted((shapes_dir / split).iterdir())}


def _same_samples(staged, folder) -> None:
    """Exactly the folder's images are staged, under the same names, labels and pixels."""
    assert isinstance(staged, StagedSource)
    assert staged.classes == folder.classes
    folder_index = {folder.name(i): i for i in range(len(folder))}
    assert sorted(staged.name(i) for i in range(len(staged))) == sorted(folder_index)
    for i in range(len(staged)):
        j = folder_index[staged.name(i)]
        assert staged.targets[i] == folder.targets[j]
        assert np.array_equal(np.asarray(staged.load(i)), np.asarray(folder.load(j)))


def _classes_per_shard(staged: StagedSource) -> list[int]:
    return [len({staged.targets[i] for i in range(len(staged)) if staged.shard_of(i) == shard})
            for shard in range(len(staged.shards))]


@pytest.mark.slow
def test_one_tar_with_splits_and_a_bad_member_stages_and_trains(shapes_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "shapes.tar"
    square = sorted((shapes_dir / "train" / "square").iterdir())[0]
    with tarfile.open(archive, "w") as tar:
        tar.add(shapes_dir, arcname=".")  # members `./train/<class>/<image>`, as `tar -C dir .` writes them
        add_member(tar, "train/circle/broken.jpg", square.read_bytes()[:200])
        add_member(tar, "train/circle/notes.txt", b"not an image")
        add_member(tar, f"train/square/{square.name}", square.read_bytes())  # appended again, like `tar -r`
    dest = tmp_path / "staged"
    manifest = stage_dataset(str(archive), str(dest), shard_size_mb=2 * SMALL_SHARD_MB, workers=2,
                             max_bad_fraction=0.05, progress=_quiet)

    assert manifest["classes"] == ["circle", "square", "star", "triangle"]
    assert (manifest["splits"]["train"]["count"], manifest["splits"]["val"]["count"]) == (64, 32)
    assert manifest["splits"]["train"]["class_counts"] == [16, 16, 16, 16]
    [bad] = manifest["skipped"]
    assert (bad["split"], bad["path"], bad["archive"]) == ("train", "train/circle/broken.jpg", str(archive))
    assert "Truncated" in bad["reason"]
    assert manifest["ignored"]["paths"] == [
        "train/shapes.tar/train/circle/notes.txt",
        f"train/shapes.tar/train/square/{square.name} (replaced by shapes.tar/train/square/{square.name})"]
    for split in ("train", "val"):
        staged = open_source(str(dest), split=split)
        assert len(staged.shards) >= 3
        assert set(_classes_per_shard(staged)) == {4}  # striped: every shard holds every class
        _same_samples(staged, open_source(str(shapes_dir), split=split))

    dump = tmp_path / "run"
    assert main(["pretrain", "--data_path", str(dest), "--dump_path", str(dump), *TINY_PRETRAIN]) == 0
    losses = [json.loads(line).get("loss") for line in (dump / "metrics.jsonl").read_text().splitlines()]
    assert len([loss for loss in losses if loss is not None]) == 2
    assert torch.load(dump / "checkpoint.pth.tar", weights_only=True)["step"] == 2


def test_per_class_tars_on_s3_stage_and_resume_without_reindexing(s3_server, shapes_dir: Path,
                                                                  monkeypatch) -> None:
    import boto3

    bucket = s3_server.bucket("archives")
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    for relative, data in _per_class_tars(shapes_dir, ["train", "val"]).items():
        client.put_object(Bucket="archives", Key=f"imagenet/{relative}", Body=data)
    source, dest = f"{bucket}/imagenet", f"{bucket}/staged"
    first = stage_dataset(source, dest, shard_size_mb=SMALL_SHARD_MB, workers=2, progress=_quiet)
    assert (first["splits"]["train"]["count"], first["splits"]["val"]["count"]) == (64, 32)
    assert first["skipped"] == [] and first["ignored"]["count"] == 0
    for split in ("train", "val"):
        _same_samples(open_source(dest, split=split), open_source(str(shapes_dir), split=split))

    # An interrupted run: no manifest and one shard never recorded. The archives must not be read again.
    client.delete_object(Bucket="archives", Key="staged/manifest.json")
    client.delete_object(Bucket="archives", Key="staged/train/train-00001.json")

    def no_reindex(url: str) -> list:
        raise AssertionError(f"{url} was indexed again")

    monkeypatch.setattr(archives, "index_tar", no_reindex)
    messages: list[str] = []
    second = stage_dataset(source, dest, shard_size_mb=SMALL_SHARD_MB, workers=2, progress=messages.append)
    assert second == first
    train_shards = len(first["splits"]["train"]["shards"])
    assert any(f"{train_shards - 1} shards done by an earlier run, 1 to write" in m for m in messages)


def test_imagenet_train_tar_of_class_tars(shapes_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "ILSVRC2012_img_train.tar"  # ImageNet's download: a tar of per-class tars
    with tarfile.open(archive, "w") as tar:
        for relative, data in _per_class_tars(shapes_dir, ["train"]).items():
            add_member(tar, relative.removeprefix("train/"), data)
    manifest = stage_dataset(str(archive), str(tmp_path / "staged"), shard_size_mb=SMALL_SHARD_MB, workers=1,
                             progress=_quiet)
    assert list(manifest["splits"]) == ["train"] and manifest["skipped"] == []
    _same_samples(open_source(str(tmp_path / "staged")), open_source(str(shapes_dir)))


def test_archives_stage_cannot_read_are_refused_with_the_fix(shapes_dir: Path, tmp_path: Path,
                                                             capsys) -> None:
    flat = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(flat, "w") as tar:
        for image in sorted((shapes_dir / "val" / "star").iterdir()):
            tar.add(image, arcname=image.name)
    assert main(["stage", "--source", str(flat), "--dest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds 8 image files outside class folders" in err and "a flat val tar needs a label file" in err

    lone = tmp_path / "val_folder"
    lone.mkdir()
    (lone / flat.name).write_bytes(flat.read_bytes())
    with pytest.raises(UserError, match="single tar.*needs a label file"):
        stage_dataset(str(lone), str(tmp_path / "out"), progress=_quiet)

    compressed = tmp_path / "shapes.tar.gz"
    with tarfile.open(compressed, "w:gz") as tar:
        tar.add(shapes_dir / "train", arcname=".")
    with pytest.raises(UserError, match="compressed tar.*plain .tar"):
        stage_dataset(str(compressed), str(tmp_path / "out"), progress=_quiet)
    not_a_tar = tmp_path / "fake.tar"
    not_a_tar.write_bytes(b"\x01" * 2048)
    with pytest.raises(UserError, match="not an uncompressed tar"):
        stage_dataset(str(not_a_tar), str(tmp_path / "out"), progress=_quiet)
