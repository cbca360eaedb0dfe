"""Whole-shard streaming (trainer/data/streaming.py): the read path chosen and logged, the shard cache (one
fetch per shard, eviction under its cap), the sampler fetching ahead without changing its order, 2 ranks x 2
workers from S3 reading every sample once with one request per shard, and retries through 503 SlowDown."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from forked import FORK, forked_child
from indexed_pixels import rank_loader
from s3_proxy import StorageProxy

from trainer import env, storage
from trainer.data import shard_fetch, streaming
from trainer.data.sampler import ResumableSampler
from trainer.data.sources import open_source
from trainer.data.staging import stage_dataset
from trainer.errors import UserError

SMALL_SHARD_MB = 12 * 1024 / 2**20  # a dozen 32 px JPEGs per shard


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setenv("UNMIX_STORAGE_RETRIES", "4")
    monkeypatch.setenv("UNMIX_STORAGE_RETRY_DELAY", "0.01")


@pytest.fixture
def default_cache(monkeypatch, tmp_path: Path) -> Path:
    """No UNMIX_SHARD_CACHE: the default cache folder, under this test's temp folder."""
    monkeypatch.delenv("UNMIX_SHARD_CACHE", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return Path(streaming.default_cache_folder())


@pytest.fixture(scope="module")
def staged_s3(s3_server, shapes_dir: Path) -> str:
    dest = f"{s3_server.bucket('streaming')}/staged"
    stage_dataset(str(shapes_dir), dest, shard_size_mb=SMALL_SHARD_MB, workers=2, progress=lambda message: None)
    return dest


def test_read_path_is_chosen_and_said(default_cache: Path, monkeypatch, tmp_path: Path) -> None:
    remote = streaming.choose_read_path("s3://bucket/staged", None)
    assert remote.kind == "cache" and remote.folder == str(default_cache) and 0 < remote.cap_bytes <= 50 * 2**30
    assert "remote storage" in remote.describe()
    assert streaming.choose_read_path(str(tmp_path), None).kind == "direct"
    assert streaming.choose_read_path("s3://bucket/staged", str(tmp_path / "c")).folder == str(tmp_path / "c")
    monkeypatch.setenv("UNMIX_SHARD_CACHE_GB", "0.5")
    assert streaming.choose_read_path("s3://bucket/staged", None).cap_bytes == 2**29
    monkeypatch.setenv("UNMIX_SHARD_CACHE", "off")
    assert streaming.choose_read_path("s3://bucket/staged", None).kind == "ranged"


def test_cache_fetches_once_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    shards = []
    for number in range(3):
        path = tmp_path / f"shard-{number}.tar"
        path.write_bytes(bytes([number]) * 1000)
        shards.append(str(path))
    cache = streaming.ShardCache(str(tmp_path / "cache"), cap_bytes=2500)  # room for two
    first = cache.fetch(shards[0], "a", 1000, None)
    reader = streaming.OpenShards()
    assert reader.read(first, 10, 20) == bytes([0]) * 10
    os.utime(first, (1, 1))  # the least recently used
    cache.fetch(shards[1], "b", 1000, None)
    os.remove(shards[1])
    assert cache.fetch(shards[1], "b", 1000, None) == cache.path("b")  # kept: not fetched again
    cache.fetch(shards[2], "c", 1000, None)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.tar")) == ["b.tar", "c.tar"]
    assert reader.read(first, 0, 5) == bytes([0]) * 5  # a reader holding an evicted shard keeps reading it
    with pytest.raises(UserError, match="changed in the store since it was staged"):
        cache.fetch(shards[0], "d", 1000, "0" * 64)


def _fetch_in_a_worker(cache: streaming.ShardCache, url: str, answers) -> None:
    started = time.monotonic()
    answers.put((cache.fetch(url, "a", 1000, None), time.monotonic() - started))


@pytest.mark.slow
def test_a_loader_worker_forked_while_the_prefetcher_downloads_a_shard_reads_it_once_published(
        tmp_path: Path, monkeypatch) -> None:
    """The hang a fresh-clone test run met: a worker forked mid-download kept a copy of the entry's lock and then
    waited on it."""
    shard = tmp_path / "shard-0.tar"
    shard.write_bytes(b"x" * 1000)
    cache = streaming.ShardCache(str(tmp_path / "cache"), cap_bytes=10**6)
    downloading, forked = threading.Event(), threading.Event()
    download = shard_fetch.download

    def held_until_forked(*args, **kwargs):
        downloading.set()
        forked.wait(30)
        return download(*args, **kwargs)

    monkeypatch.setattr(shard_fetch, "download", held_until_forked)
    ahead = threading.Thread(target=cache.fetch, args=(str(shard), "a", 1000, None), kwargs={"wait": False})
    ahead.start()
    assert downloading.wait(30)
    answers = FORK.Queue()
    try:
        with forked_child(_fetch_in_a_worker, cache, str(shard), answers) as worker:
            forked.set()
            ahead.join(30)
            local, waited_s = answers.get(timeout=30)  # before the fix: never
            assert local == cache.path("a") and Path(local).read_bytes() == b"x" * 1000 and waited_s < 30
            worker.join(30)
            assert worker.exitcode == 0
    finally:
        forked.set()


class _Recorder:
    def __init__(self, shard_of: np.ndarray) -> None:
        self.shard_numbers, self.calls = shard_of, []

    def __len__(self) -> int:
        return len(self.shard_numbers)

    def prefetch(self, shards: list[int]) -> None:
        self.calls.append(shards)


def test_sampler_fetches_the_next_shards_ahead_and_keeps_its_order() -> None:
    shard_of = np.repeat(np.arange(9), 10)
    source = _Recorder(shard_of)
    plain = ResumableSampler(shard_of, 1, 2, seed=4, batch_size=5)
    fetching = ResumableSampler(shard_of, 1, 2, seed=4, batch_size=5, source=source)
    for start in (0, 3):
        plain.set_epoch(2, start)
        fetching.set_epoch(2, start)
        assert list(fetching) == list(plain)
    sequence = fetching.shard_sequence(2)
    assert source.calls[0] == sequence[:1 + env.current().shards_ahead]
    assert [call[0] for call in source.calls[:len(sequence)]] == sequence
    assert source.calls[len(sequence) - 1] == [sequence[-1], *fetching.shard_sequence(3)[:env.current().shards_ahead]]
    assert streaming.source_for(shard_of) is None  # not a registered source


def test_two_ranks_two_workers_stream_whole_shards_from_s3(staged_s3: str, default_cache: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="trainer.data.sources"):
        source = open_source(staged_s3)
    assert source.read_path.kind == "cache" and "whole shards into the local shard cache" in caplog.text
    assert streaming.source_for(source.shard_numbers) is source
    shard_of = [source.shard_of(i) for i in range(len(source))]
    before = streaming.read_counts()
    seen: list[int] = []
    for rank in (0, 1):
        loader = rank_loader(source, shard_of, rank, seed=3, batch_size=4, epoch=1)
        rank_seen = []
        for indices, _, pixels in loader:
            assert pixels.shape == (4, 32, 32, 3)
            rank_seen += indices.tolist()
        assert rank_seen == loader.sampler.rank_order(1).tolist()
        resumed = ResumableSampler(shard_of, rank=rank, world_size=2, seed=3, batch_size=4)
        resumed.set_epoch(1, start_batch=3)  # exact mid-epoch resume: the same tail
        assert [index for _, index in resumed] == rank_seen[12:]
        seen += rank_seen
    assert sorted(seen) == list(range(len(source)))
    read = streaming.read_counts()
    shards = source.shards
    # every shard fetched once for the host (workers and the prefetcher share the cache), whole: one request each;
    # the prefetcher may also have fetched the next epoch's first shards
    assert len(shards) <= read.requests - before.requests <= len(shards) + 2 * env.current().shards_ahead
    assert read.bytes - before.bytes >= sum(shard["size"] for shard in shards)
    assert len(list(default_cache.glob("*.tar"))) == len(shards)


def test_ranged_reads_stay_available_and_are_counted(staged_s3: str, monkeypatch) -> None:
    monkeypatch.setenv("UNMIX_SHARD_CACHE", "off")
    source = open_source(staged_s3)
    assert source.read_path.kind == "ranged"
    before = streaming.read_counts()
    for index in (5, 1, 9):
        assert source.load(index) is not None
    assert streaming.read_counts().requests - before.requests == 3


def test_slow_down_answers_are_retried_with_backoff(staged_s3: str, s3_server, monkeypatch, tmp_path: Path,
                                                    quick_retries, caplog) -> None:
    """The proxy answers 503 SlowDown to the first 3 GETs: neither botocore nor s3fs retries (one budget,
    with_retries'), which backs off and the read succeeds; a shard fetch into the cache rides through the same
    way."""
    proxy = StorageProxy(int(s3_server.endpoint.rsplit(":", 1)[1]), slow_down=3)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        manifest = f"{staged_s3}/manifest.json"
        with caplog.at_level(logging.WARNING, logger="trainer.storage"):
            assert storage.read_bytes(manifest).startswith(b"{")
        assert proxy.slowed_down == 3 and "retry 3/3" in caplog.text and "OSError" in caplog.text
        source = open_source(staged_s3, cache_dir=str(tmp_path / "cache"))
        proxy.slow_down = 3
        assert source.load(0) is not None and proxy.slowed_down == 6
    finally:
        proxy.close()
