from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from indexed_pixels import rank_loader
from planted import PLANTED_BAD, PLANTED_IGNORED

from trainer.cli import main
from trainer.data.sampler import ResumableSampler
from trainer.data.sources import StagedSource, open_source
from trainer.data.staging import stage_dataset
from trainer.errors import UserError

SMALL_SHARD_MB = 12 * 1024 / 2**20  # about 12 KB: a dozen 32 px JPEGs per shard, so tests see many shards


def _pixels(source, index: int) -> np.ndarray:
    return np.asarray(source.load(index))


def _same_samples(staged, folder) -> None:
    """Every decodable file is staged, with the same pixels and label."""
    folder_index = {folder.name(i): i for i in range(len(folder)) if folder.load(i) is not None}
    assert sorted(staged.name(i) for i in range(len(staged))) == sorted(folder_index)
    for i in range(len(staged)):
        j = folder_index[staged.name(i)]
        assert staged.classes[staged.targets[i]] == folder.classes[folder.targets[j]]
        assert np.array_equal(_pixels(staged, i), _pixels(folder, j))


def test_planted_bad_files_are_reported_exactly(planted_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    manifest = stage_dataset(str(planted_folder), str(dest), workers=1, max_bad_fraction=0.5,
                             progress=lambda message: None)
    assert {entry["path"] for entry in manifest["skipped"]} == PLANTED_BAD
    reasons = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert "empty" in reasons["cats/empty.jpg"]
    assert "decompression-bomb" in reasons["dogs/huge.png"]
    assert set(manifest["ignored"]["paths"]) == {f"train/{name}" for name in PLANTED_IGNORED}
    assert manifest["splits"]["train"]["count"] == 8
    assert manifest["splits"]["train"]["modes"] == {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGB": 3, "RGBA": 1}

    staged = open_source(str(dest))
    assert isinstance(staged, StagedSource)
    _same_samples(staged, open_source(str(planted_folder)))
    shard = manifest["splits"]["train"]["shards"][0]
    with tarfile.open(dest / shard["path"]) as tar:  # plain tars: <key>.<ext>, <key>.cls, <key>.json per sample
        assert len(tar.getnames()) == 3 * shard["count"] == 24


def test_too_many_bad_files_fail_with_a_report(planted_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    with pytest.raises(UserError, match=r"4 of 12 files .* over --max_bad_fraction 0.1"):
        stage_dataset(str(planted_folder), str(dest), workers=1, max_bad_fraction=0.1,
                      progress=lambda message: None)
    assert not (dest / "manifest.json").exists()
    report = json.loads((dest / "staging-report.json").read_text())
    assert {entry["path"] for entry in report["skipped"]} == PLANTED_BAD


@pytest.mark.slow
def test_resume_reuses_finished_shards_and_redoes_the_rest(shapes_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    first = stage_dataset(str(shapes_dir), str(dest), shard_size_mb=SMALL_SHARD_MB, workers=2,
                          progress=lambda message: None)
    shards = sorted((dest / "train").glob("train-*.tar"))
    assert len(shards) >= 4
    # An interrupted run: no manifest, one shard never recorded, one tar cut short mid-upload.
    (dest / "manifest.json").unlink()
    shards[0].with_suffix(".json").unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:1000])
    untouched = {path: path.stat().st_mtime_ns for path in shards[2:]}
    messages: list[str] = []
    second = stage_dataset(str(shapes_dir), str(dest), shard_size_mb=SMALL_SHARD_MB, workers=2,
                           progress=messages.append)
    assert second == first
    assert any(f"{len(shards) - 2} shards done by an earlier run, 2 to write" in m for m in messages)
    assert {path: path.stat().st_mtime_ns for path in shards[2:]} == untouched
    _same_samples(open_source(str(dest)), open_source(str(shapes_dir)))


def test_stage_to_and_stream_from_s3(s3_server, shapes_dir: Path, tmp_path: Path) -> None:
    dest = s3_server.bucket("staging") + "/shapes"
    manifest = stage_dataset(str(shapes_dir), dest, shard_size_mb=SMALL_SHARD_MB, workers=2,
                             progress=lambda message: None)
    assert manifest["splits"]["val"]["count"] == 32
    for split in ("train", "val"):
        staged = open_source(dest, split=split)
        assert len(staged.shards) > 1
        _same_samples(staged, open_source(str(shapes_dir), split=split))

    cached = open_source(dest, cache_dir=str(tmp_path / "cache"))
    shard_sums = {shard["sha256"] for shard in manifest["splits"]["train"]["shards"]}
    assert all(cached.load(i) is not None for i in range(len(cached)))
    assert {path.stem for path in (tmp_path / "cache").glob("*.tar")} == shard_sums


def test_two_ranks_two_workers_read_every_sample_once_per_epoch(s3_server, shapes_dir: Path) -> None:
    dest = s3_server.bucket("sampling") + "/shapes"
    stage_dataset(str(shapes_dir), dest, shard_size_mb=SMALL_SHARD_MB, workers=2, progress=lambda m: None)
    source = open_source(dest)  # 64 samples: 2 ranks x 2 batches of 16
    assert len(set(source.shard_of(i) for i in range(len(source)))) > 2
    shard_of = [source.shard_of(i) for i in range(len(source))]
    seen: list[int] = []
    for rank in (0, 1):
        for indices, _, pixels in rank_loader(source, shard_of, rank, seed=7, batch_size=16):
            assert pixels.shape == (16, 32, 32, 3)
            seen += indices.tolist()
    assert sorted(seen) == list(range(len(source)))

    next_epoch = []
    for rank in (0, 1):
        sampler = ResumableSampler(shard_of, rank=rank, world_size=2, seed=7, batch_size=16)
        sampler.set_epoch(1)
        next_epoch += [index for _, index in sampler]
    assert sorted(next_epoch) == list(range(len(source))) and next_epoch != seen  # reshuffled per epoch


@pytest.mark.parametrize("source", ["builtin:shapes", "builtin:textures"])
@pytest.mark.slow
def test_cli_stages_builtin_datasets(tmp_path: Path, capsys, source: str) -> None:
    dest = tmp_path / "generated"
    command = [sys.executable, "-m", "trainer", "stage", "--source", source, "--dest", str(dest),
               "--num_classes", "3", "--images_per_class", "6", "--image_size", "24", "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "stage train: 1/1 shards, 18/18 images" in result.stderr
    manifest = json.loads((dest / "manifest.json").read_text())
    assert (manifest["source"], manifest["splits"]["train"]["count"], manifest["splits"]["val"]["count"]) == \
        (source, 18, 6)

    assert main(["stage", "--source", str(tmp_path / "missing"), "--dest", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
