"""The shard cache serves only verified bytes (trainer/data/streaming.py, shard_fetch.py), against a real S3
server (moto on loopback): a damaged cache entry is discarded, counted, logged and fetched again, and every
sample still loads; a shard changed or deleted in the bucket is one UserError naming it; local faults under
the cache are UserErrors naming the cache folder (a real tmpfs mount where the machine allows one)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tar_members import add_member

from trainer import storage
from trainer.data import shard_fetch, streaming
from trainer.data.sources import open_source
from trainer.data.staging import stage_dataset
from trainer.errors import UserError

SMALL_SHARD_MB = 12 * 1024 / 2**20  # a dozen 32 px images per shard: several shards


@pytest.fixture(scope="module")
def staged(s3_server, shapes_dir: Path) -> str:
    dest = f"{s3_server.bucket('integrity')}/staged"
    stage_dataset(str(shapes_dir), dest, shard_size_mb=SMALL_SHARD_MB, workers=2, progress=lambda message: None)
    return dest


@pytest.fixture
def own_copy(staged: str, request) -> str:
    """A copy of the staged dataset that this test may damage in the bucket."""
    fs, path = storage.filesystem(staged)
    dest = f"{staged}-{request.node.name.replace('[', '-').replace(']', '')}"
    fs.copy(path, storage.filesystem(dest)[1], recursive=True)
    return dest


def load_all(source) -> int:
    """Load every sample; the count loaded (the dataset is complete when it is len(source))."""
    loaded = sum(source.load(index) is not None for index in range(len(source)))
    assert source.skipped == 0, source.bad_files()
    return loaded


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.tar"))


def truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def flip(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0xFF
    entry.write_bytes(bytes(data))


def empty(entry: Path) -> None:
    entry.write_bytes(b"")


def drop_record(entry: Path) -> None:
    Path(shard_fetch.record_path(str(entry))).unlink()


def garble_record(entry: Path) -> None:
    Path(shard_fetch.record_path(str(entry))).write_text("{not json")


def lie_in_record(entry: Path) -> None:
    """A record whose digest is not the manifest's (and the entry flipped to match nothing)."""
    record = Path(shard_fetch.record_path(str(entry)))
    record.write_text(json.dumps({**json.loads(record.read_text()), "sha256": "0" * 64}))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate, "bytes"),
    "emptied": (empty, "0 bytes"),
    "flipped": (flip, "does not match its digest"),
    "record missing": (drop_record, "no digest record"),
    "record garbled": (garble_record, "unreadable"),
    "record not the manifest's": (lie_in_record, "not the manifest's"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_entry_is_fetched_again_and_no_sample_is_lost(staged: str, tmp_path: Path, damage: str,
                                                                 caplog) -> None:
    cache = tmp_path / "cache"
    first = open_source(staged, cache_dir=str(cache))
    assert load_all(first) == len(first)
    victim = entries(cache)[1]
    intact = victim.read_bytes()
    DAMAGE[damage][0](victim)
    damaged_before = streaming.read_counts()
    with caplog.at_level(logging.WARNING, logger="trainer.data.streaming"):
        again = open_source(staged, cache_dir=str(cache))  # the next run on this host
        assert load_all(again) == len(again)
    lines = [r.getMessage() for r in caplog.records if "is damaged (" in r.getMessage()]
    assert len(lines) == 1 and DAMAGE[damage][1] in lines[0] and "fetched again" in lines[0], lines
    assert "damaged entries so far" in lines[0]
    assert victim.read_bytes() == intact and streaming.read_counts().requests > damaged_before.requests


def test_the_damage_count_runs_on(staged: str, tmp_path: Path, caplog) -> None:
    cache = tmp_path / "cache"
    assert load_all(open_source(staged, cache_dir=str(cache))) > 0
    for entry in entries(cache)[:2]:
        flip(entry)
    with caplog.at_level(logging.WARNING, logger="trainer.data.streaming"):
        load_all(open_source(staged, cache_dir=str(cache)))
    counts = [int(r.getMessage().split("(")[-1].split()[0]) for r in caplog.records
              if "damaged entries so far" in r.getMessage()]
    assert len(counts) == 2 and counts[1] == counts[0] + 1


def test_an_entry_damaged_during_the_run_is_rechecked_when_a_sample_fails(staged: str, tmp_path: Path,
                                                                          caplog) -> None:
    """Checked this run, so reuse checks its size only; a sample that then fails to decode has the entry's
    digest checked, and the refetched shard gives the sample: nothing is skipped."""
    cache = tmp_path / "cache"
    source = open_source(staged, cache_dir=str(cache))
    assert load_all(source) == len(source)
    shard = source.shard_of(0)
    entry = Path(source.fetch_shard(shard))
    data = bytearray(entry.read_bytes())
    offset = int(source._offset[0])
    data[offset:offset + 16] = bytes(16)  # the image's header: it cannot decode
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert source.load(0) is not None
    assert source.skipped == 0 and "does not match its digest" in caplog.text and "skipping" not in caplog.text


def test_a_sample_bad_in_the_shard_itself_is_still_skipped_once(tmp_path: Path) -> None:
    """The recheck finds the entry intact: the sample is skipped and counted as before (a real bad file)."""
    cache = streaming.ShardCache(str(tmp_path / "cache"), cap_bytes=2**20)
    shard = tmp_path / "s.tar"
    shard.write_bytes(b"x" * 1000)
    local = cache.fetch(str(shard), "k", 1000, None)
    assert local is not None and not cache.recheck(str(shard), "k", 1000, None, None)


@pytest.mark.parametrize("how", ["same size", "other size"])
def test_a_shard_changed_in_the_bucket_since_staging_is_refused(own_copy: str, tmp_path: Path, how: str) -> None:
    source = open_source(own_copy, cache_dir=str(tmp_path / "cache"))
    url = source.shard_urls[0]
    original = storage.read_bytes(url)
    replaced = bytes([original[0] ^ 1]) + original[1:] if how == "same size" else original + bytes(512)
    storage.atomic_write_bytes(url, replaced)
    with pytest.raises(UserError, match=f"shard {url} changed in the store since it was staged") as raised:
        source.load(0)
    assert "restage" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("how", ["deleted", "resized"])
def test_a_shard_missing_or_resized_before_the_run_is_refused_at_open(own_copy: str, tmp_path: Path,
                                                                      how: str) -> None:
    """Before any work: one listing of the shard folder against the manifest's names and sizes."""
    url = open_source(own_copy, cache_dir=str(tmp_path / "cache")).shard_urls[-1]
    fs, path = storage.filesystem(url)
    if how == "deleted":
        fs.rm(path)
    else:
        storage.atomic_write_bytes(url, storage.read_bytes(url)[:-512])
    expected = "is missing from the store" if how == "deleted" else "changed in the store since it was staged"
    with pytest.raises(UserError, match=f"shard {url} {expected}"):
        open_source(own_copy, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("read_path", ["cache", "ranged"])
@pytest.mark.parametrize("when", ["after opening", "during"])
def test_a_shard_deleted_from_the_bucket_is_named(own_copy: str, tmp_path: Path, monkeypatch, read_path: str,
                                                 when: str) -> None:
    if read_path == "ranged":
        monkeypatch.setenv("UNMIX_SHARD_CACHE", "off")
    source = open_source(own_copy, cache_dir=str(tmp_path / "cache") if read_path == "cache" else None)
    last = source.shard_urls[-1]
    in_last = [index for index in range(len(source)) if source.shard_urls[source.shard_of(index)] == last]
    if when == "during":  # the first shard's samples, backwards (in shard order the next shard is fetched ahead)
        first = [index for index in range(len(source)) if source.shard_of(index) == 0]
        assert all(source.load(index) is not None for index in reversed(first))
    fs, path = storage.filesystem(last)
    fs.rm(path)
    with pytest.raises(UserError, match=f"shard {last} is missing from the store") as raised:
        source.load(in_last[0])
    assert own_copy + "/" not in str(raised.value).replace(last, "")  # the shard, not the dataset or a dump path


def test_a_webdataset_shard_replaced_after_indexing_is_refused(s3_server, tmp_path: Path, monkeypatch) -> None:
    """WebDataset shards have no manifest digest: their size and ETag as indexed are what is checked."""
    import io
    import tarfile

    monkeypatch.setenv("UNMIX_INDEX_CACHE", str(tmp_path / "index"))
    bucket = s3_server.bucket("integrity-wds")
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "JPEG")
    image = buffer.getvalue()

    def shard(tag: bytes) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for key, data in ((f"s{n}", image) for n in range(3)):
                for suffix, payload in ((".jpg", data), (".cls", b"0"), (".txt", tag)):
                    add_member(tar, key + suffix, payload)
        return out.getvalue()

    url = f"{bucket}/wds/train-0000.tar"
    storage.atomic_write_bytes(url, shard(b"a"))
    source = open_source(url, cache_dir=str(tmp_path / "cache"))
    storage.atomic_write_bytes(url, shard(b"b"))  # same size, new ETag
    with pytest.raises(UserError, match=f"shard {url} changed in the store since it was indexed"):
        source.load(0)


def test_a_background_fetch_failure_is_handed_to_the_reader_not_retried(tmp_path: Path, monkeypatch) -> None:
    """The prefetcher spent the retry budget: the reader raises its error at once (no second budget)."""
    calls = []

    def failing_download(expected, tmp, part_bytes, concurrency):
        calls.append(expected.url)
        raise storage.StorageUnavailable(f"fetching shard {expected.url} failed 8 times over 91s")

    monkeypatch.setattr(shard_fetch, "download", failing_download)
    cache = streaming.ShardCache(str(tmp_path / "cache"), cap_bytes=2**20)
    with pytest.raises(storage.StorageUnavailable):
        cache.fetch("s3://b/shard-0.tar", "k", 10, None, wait=False)  # what the prefetcher calls
    with pytest.raises(storage.StorageUnavailable, match="failed 8 times over 91s"):
        cache.fetch("s3://b/shard-0.tar", "k", 10, None)  # the reader
    assert calls == ["s3://b/shard-0.tar"]
    with pytest.raises(storage.StorageUnavailable):  # handed over once: a later read tries the store again
        cache.fetch("s3://b/shard-0.tar", "k", 10, None)
    assert len(calls) == 2


@pytest.mark.parametrize("left_by", ["another run", "this run, longer ago than a budget"])
def test_a_failure_left_earlier_is_not_raised(tmp_path: Path, left_by: str) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(b"y" * 100)
    (tmp_path / "cache").mkdir()
    earlier = streaming.ShardCache(str(tmp_path / "cache"), cap_bytes=2**20)
    earlier._leave_failure(earlier.path("k"), storage.StorageUnavailable("old outage"))
    cache = streaming.ShardCache(str(tmp_path / "cache"), 2**20) if left_by == "another run" else earlier
    if left_by != "another run":
        failed = Path(earlier.path("k") + ".failed")
        failed.write_text(json.dumps({**json.loads(failed.read_text()), "at": 0}))
    assert cache.fetch(str(shard), "k", 100, None) is not None


def test_access_denied_by_the_store_is_not_called_a_cache_fault(tmp_path: Path, monkeypatch) -> None:
    """Stand-in for S3 AccessDenied (s3fs raises PermissionError; root here bypasses file modes): the error
    names the shard and the credentials, not the cache folder."""
    import fsspec.implementations.local

    shard = tmp_path / "s.tar"
    shard.write_bytes(b"z" * 100)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "open", refuse)
    with pytest.raises(UserError, match=f"access denied reading shard {shard}") as raised:
        streaming.ShardCache(str(tmp_path / "cache"), 2**20).fetch(str(shard), "k", 100, None)
    assert "shard cache" not in str(raised.value)


# --- local faults under the cache ----------------------------------------------------------------------------


def tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")


@pytest.fixture
def small_disk(tmp_path: Path):
    folder = tmp_path / "small"
    tmpfs(folder, "16k")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def read_only_disk(tmp_path: Path):
    folder = tmp_path / "ro"
    tmpfs(folder, "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("disk", ["small_disk", "read_only_disk"])
def test_a_local_fault_under_the_cache_is_a_user_error_naming_the_folder(staged: str, disk: str, request) -> None:
    folder = request.getfixturevalue(disk) / "cache"
    if disk == "small_disk":
        folder.mkdir()
    source = open_source(staged, cache_dir=str(folder)) if disk == "small_disk" else None
    with pytest.raises(UserError) as raised:
        if source is None:
            source = open_source(staged, cache_dir=str(folder))
        load_all(source)
    message = str(raised.value)
    assert message.startswith(f"shard cache {folder}") and "UNMIX_SHARD_CACHE" in message, message
    assert "store" not in message.split(";")[0]


def pretrain(data: str, dump: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The CLI, a few steps from `data`; (the finished process, its `error:` lines)."""
    done = subprocess.run([sys.executable, "-m", "trainer", "pretrain", "--data_path", data, "--dump_path", dump,
                           "--preset", "demo_cpu", "--nmb_crops", "2", "--size_crops", "32", "--min_scale_crops",
                           "0.3", "--max_scale_crops", "1", "--batch_size", "8", "--epochs", "1",
                           "--nmb_prototypes", "20", "--workers", "1", "--max_steps", "4"],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=300)
    return done, [line for line in done.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_full_cache_disk_ends_the_cli_with_exit_2_not_138(staged: str, small_disk: Path, tmp_path: Path) -> None:
    done, errors = pretrain(staged, str(tmp_path / "dump"), UNMIX_SHARD_CACHE=str(small_disk / "cache"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and f"shard cache {small_disk / 'cache'}" in errors[0] and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["deleted", "replaced, same size"])
def test_a_shard_deleted_or_replaced_in_the_bucket_ends_the_cli_with_exit_2_naming_it(own_copy: str,
                                                                                     tmp_path: Path,
                                                                                     fault: str) -> None:
    url = open_source(own_copy, cache_dir=str(tmp_path / "probe")).shard_urls[0]
    if fault == "deleted":
        fs, path = storage.filesystem(url)
        fs.rm(path)
    else:
        original = storage.read_bytes(url)
        storage.atomic_write_bytes(url, bytes([original[0] ^ 1]) + original[1:])
    dump = str(tmp_path / "dump")
    done, errors = pretrain(own_copy, dump, UNMIX_SHARD_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and f"shard {url} " in errors[0] and dump not in errors[0], errors
    assert "Traceback" not in done.stderr


def test_a_shard_in_many_parts_is_fetched_in_order_and_hashed_whole(staged: str, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Parts of 4 KB, 4 in flight (real ranged GETs against moto): the entry is the shard, byte for byte, and
    its digest record is the manifest's."""
    monkeypatch.setattr(streaming, "PART_BYTES", 4096)
    source = open_source(staged, cache_dir=str(tmp_path / "cache"))
    before = streaming.read_counts().requests
    local = Path(source.fetch_shard(0))
    original = storage.read_bytes(source.shard_urls[0])
    assert local.read_bytes() == original and len(original) > 3 * 4096
    assert streaming.read_counts().requests - before == -(-len(original) // 4096)
    record = json.loads(Path(shard_fetch.record_path(str(local))).read_text())
    assert record["sha256"] == source.shards[0]["sha256"] and record["size"] == len(original)


def test_a_shard_replaced_during_its_download_is_refused_not_mixed(own_copy: str, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """The object is replaced (same size) after its first part was read: the other parts are conditioned on
    the ETag seen at open (If-Match), so the download fails in one line instead of mixing two versions."""
    monkeypatch.setattr(streaming, "PART_BYTES", 4096)
    monkeypatch.setattr(streaming, "PART_CONCURRENCY", 1)
    source = open_source(own_copy, cache_dir=str(tmp_path / "cache"))
    url = source.shard_urls[0]
    original = storage.read_bytes(url)
    read_range = shard_fetch._read_range

    def replace_after_first_part(fs, path, handle, start, end):
        data = read_range(fs, path, handle, start, end)
        if start == 0:
            storage.atomic_write_bytes(url, bytes(len(original)))
        return data

    monkeypatch.setattr(shard_fetch, "_read_range", replace_after_first_part)
    with pytest.raises(UserError, match=f"shard {url} changed in the store since it was staged .replaced while"):
        source.fetch_shard(0)
    assert not list((tmp_path / "cache").glob("*.tar"))
