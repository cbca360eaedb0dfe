"""Whole-shard streaming from remote storage: a host-local shard cache with a size cap, filled whole shards
ahead of the reader, and a count of the storage requests this process (and its loader workers) made.

Why: a per-sample ranged GET costs one store round trip (tens of ms) per image, and 64 ranks of them are
tens of thousands of requests per second on one prefix, past what S3 serves before it answers SlowDown.
Here a shard is fetched as ranged GETs of `PART_BYTES`, `PART_CONCURRENCY` in flight, hashed and written
in order and verified before it is published (trainer/data/shard_fetch.py), once per host, and samples
are then read from the local file (the page cache), so the shuffle inside a shard happens at memory speed.
`ResumableSampler` knows the rank's shard sequence and asks for the next `SHARDS_AHEAD` shards in the
background while the current one is read; the order itself is untouched, so resume and per-rank
disjointness are the sampler's alone.

Bounds (per rank): memory for downloads FETCH_THREADS x (PART_CONCURRENCY + 1) x PART_BYTES (80 MB) in the
main process (a loader worker that needs a shard no one fetched yet fetches it itself: 40 MB), one sample's bytes
per loader worker (no shard is held in a worker's memory); disk
(1 + SHARDS_AHEAD + 1) x shard size (the shard being read, the ones fetched ahead, and one that late
workers still finish), under the cache's cap. Settings come from the environment:
  UNMIX_SHARD_CACHE     folder of the cache (default: <tmp>/unmix-shard-cache-<uid>); `off`: no cache, one
                        ranged GET per sample in trainer order (read-ahead in shard order), the old path
  UNMIX_SHARD_CACHE_GB  the cap (default: half the free space of the folder's disk, at most 50 GB)
  UNMIX_SHARDS_AHEAD    shards fetched ahead of the one being read (default 2)
  UNMIX_VERIFY_SHARDS   0: no hashing or digest records (to measure their cost; default 1)
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trainer import env, file_lock, storage
from trainer.data import shard_fetch
from trainer.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_CAP_BYTES = 50 * 2**30
PART_BYTES = 8 * 2**20  # s3: shards above this are fetched as parts of this size, PART_CONCURRENCY at a time
PART_CONCURRENCY = 4
FETCH_THREADS = 2  # background fetches at a time per process
_SUFFIX = ".tar"


# --- the request counter -------------------------------------------------------------------------------------

# Shared memory made at import, before DataLoader workers fork: the workers' requests add to the same counts.
# (With the spawn start method a worker re-imports this module and counts alone.)
_COUNTS = multiprocessing.RawArray("q", 3)  # requests, bytes, damaged cache entries found
_COUNTS_LOCK = multiprocessing.Lock()


@dataclass(frozen=True)
class ReadCounts:
    """Storage requests and bytes read from remote storage so far by this process and its forked workers."""

    requests: int
    bytes: int


def count_request(nbytes: int, requests: int = 1) -> None:
    with _COUNTS_LOCK:
        _COUNTS[0] += requests
        _COUNTS[1] += nbytes


def count_damaged() -> int:
    """Count one damaged cache entry (this process and its forked workers); the running total."""
    with _COUNTS_LOCK:
        _COUNTS[2] += 1
        return int(_COUNTS[2])


def read_counts() -> ReadCounts:
    with _COUNTS_LOCK:
        return ReadCounts(int(_COUNTS[0]), int(_COUNTS[1]))



def fetch_requests(size: int) -> int:
    """GET requests one whole-shard fetch of `size` bytes makes (shard_fetch.download: ranged parts of
    PART_BYTES; the open before them is a HEAD)."""
    return max(1, math.ceil(size / PART_BYTES))

# --- which read path ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadPath:
    """How a sharded source reads: `cache` (whole shards into `folder`), `direct` (local shards, read in
    place) or `ranged` (one ranged read per sample; read-ahead in shard order); `why` says why, for the log."""

    kind: str
    why: str
    folder: str | None = None
    cap_bytes: int = 0

    def describe(self) -> str:
        if self.kind == "cache":
            return (f"whole shards into the local shard cache {self.folder} (cap {self.cap_bytes / 2**30:.1f} GB, "
                    f"{env.current().shards_ahead} shards fetched ahead): {self.why}")
        return f"{'one ranged read per sample' if self.kind == 'ranged' else 'in place'}: {self.why}"


def default_cache_folder() -> str:
    return os.path.join(tempfile.gettempdir(), f"unmix-shard-cache-{os.getuid()}")


def cache_cap_bytes(folder: str) -> int:
    """UNMIX_SHARD_CACHE_GB, else half the free space of `folder`'s disk, at most DEFAULT_CAP_BYTES."""
    if env.current().shard_cache_gb is not None:
        return int(env.current().shard_cache_gb * 2**30)
    with shard_fetch.local_faults(folder):
        os.makedirs(folder, exist_ok=True)
        return min(DEFAULT_CAP_BYTES, shutil.disk_usage(folder).free // 2)


def choose_read_path(url: str, cache_dir: str | None) -> ReadPath:
    """`cache_dir` if given; else UNMIX_SHARD_CACHE (`off`: ranged reads); else the cache in a temp folder for
    remote shards, and local shards read in place."""
    setting = cache_dir or env.current().shard_cache
    if setting == "off":
        return ReadPath("ranged", "UNMIX_SHARD_CACHE=off")
    if setting is not None:
        why = "cache_dir given" if cache_dir else "UNMIX_SHARD_CACHE set"
        return ReadPath("cache", why, setting, cache_cap_bytes(setting))
    if storage.is_local(url):
        return ReadPath("direct", "the shards are on a local filesystem")
    folder = default_cache_folder()
    return ReadPath("cache", "remote storage (the default; UNMIX_SHARD_CACHE=<folder> sets where, =off turns it off)",
                    folder, cache_cap_bytes(folder))


# --- the cache ------------------------------------------------------------------------------------------------


class ShardCache:
    """Whole shards on local disk under `folder`, named by their content key, at most `cap_bytes` of them.

    Only verified bytes are served (trainer/data/shard_fetch.py): a shard is hashed as it streams in and
    checked against what the dataset says before it is published with its digest record; an entry found on
    disk is checked before its first use by each process (size always; its digest once per run on this host);
    a damaged entry is discarded, counted, logged and fetched again, so no sample is lost to a damaged cache.
    One download per host: processes that need a shard being fetched wait on its lock file instead of
    fetching it again; a background fetch (`wait=False`) skips a shard another process is fetching, and when
    it fails it leaves its error for the reader (`<entry>.failed`), which raises it instead of spending a
    second retry budget. Full: the least recently used shards go first (a reader holding one open keeps
    reading it: Linux frees an unlinked file when its last reader closes it).
    """

    def __init__(self, folder: str, cap_bytes: int) -> None:
        self.folder, self.cap_bytes = folder, cap_bytes
        self.started = time.time()  # digests checked since then were checked by this run (this host's clock)
        self.run = uuid.uuid4().hex  # this run's processes (forked loader workers share it)
        self._checked: dict[str, tuple[int, int, int]] = {}  # entry -> (inode, size, mtime) checked here

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key + _SUFFIX)

    def fetch(self, url: str, key: str, size: int | None, checksum: str | None, wait: bool = True,
              version: str | None = None) -> str | None:
        """Local path of shard `url` (checked, or downloaded first); None when `wait` is False and another
        process holds its download. `size`, `checksum` and `version` are what it must be (shard_fetch.Expected)."""
        local = self.path(key)
        if self._seen(local):
            return local
        expected = shard_fetch.Expected(url, size, checksum, version)
        with shard_fetch.local_faults(self.folder):
            os.makedirs(self.folder, exist_ok=True)
            with file_lock.held(f"{local}.lock", wait) as held:
                if not held:
                    return None
                if not self._usable(local, expected):
                    self._raise_left_failure(local)
                    try:
                        self._download(expected, local)
                    except (storage.StorageUnavailable, UserError) as error:
                        if not wait:
                            self._leave_failure(local, error)
                        raise
        return local

    def _seen(self, local: str) -> bool:
        """Checked by this process already, and unchanged since (same file, size and time)."""
        try:
            info = os.stat(local)
        except FileNotFoundError:
            return False
        return self._checked.get(local) == (info.st_ino, info.st_size, info.st_mtime_ns)

    def _remember(self, local: str) -> None:
        info = os.stat(local)
        self._checked[local] = (info.st_ino, info.st_size, info.st_mtime_ns)

    def _usable(self, local: str, expected: shard_fetch.Expected, trusted_since: float | None = None) -> bool:
        """Whether entry `local` exists and passes its check (else it is discarded, counted and logged); its
        digest is checked unless the record says it was checked since `trusted_since` (default: this run)."""
        if not os.path.exists(local):
            return False
        if shard_fetch.verifying():
            try:
                shard_fetch.check_entry(local, expected, self.started if trusted_since is None else trusted_since)
            except shard_fetch.Damaged as why:
                self._discard(local)
                log.warning("shard cache %s: the entry of %s is damaged (%s); discarded and fetched again "
                            "(%d damaged entries so far)", self.folder, expected.url, why, count_damaged())
                return False
        self._remember(local)
        return True

    def _download(self, expected: shard_fetch.Expected, local: str) -> None:
        tmp = f"{local}.{uuid.uuid4().hex}.tmp"
        try:
            digest, got = self._download_once(expected, tmp)
            if shard_fetch.verifying() and expected.sha256 is not None and digest != expected.sha256:
                # Bytes damaged in transit differ each time; a shard replaced in the store is wrong twice alike.
                again, got = self._download_once(expected, tmp)
                if again != expected.sha256:
                    raise shard_fetch.changed(expected, "its sha256 is not the manifest's" if again == digest
                                              else "two downloads differ and neither matches the manifest")
                log.warning("shard %s did not match its digest once (damaged in transit); fetched again",
                            expected.url)
                digest = again
            if shard_fetch.verifying():
                shard_fetch.write_record(local, digest, got)
            os.replace(tmp, local)
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{local}.failed")
            self._remember(local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _download_once(self, expected: shard_fetch.Expected, tmp: str) -> tuple[str, int]:
        if expected.size is not None:
            self.make_room(expected.size)
        digest, got, requests = shard_fetch.download(expected, tmp, PART_BYTES, PART_CONCURRENCY)
        if expected.size is None:
            self.make_room(got)
        count_request(got, requests)
        return digest, got

    def _leave_failure(self, local: str, error: Exception) -> None:
        with open(f"{local}.failed", "w") as handle:
            json.dump({"run": self.run, "at": time.time(), "message": str(error),
                       "kind": "store" if isinstance(error, storage.StorageUnavailable) else "user"}, handle)

    def _raise_left_failure(self, local: str) -> None:
        """A background fetch of this run failed on this shard (its retry budget spent) within the last budget's
        sleeps: raise its error again. Older ones are dropped: the store may be back."""
        try:
            with open(f"{local}.failed") as handle:
                failure = json.load(handle)
            os.remove(f"{local}.failed")
        except (OSError, ValueError):
            return
        settings = env.current()
        window = storage.retry_bound_s(settings.storage_retries, settings.storage_retry_delay_s,
                                       storage.RETRY_MAX_DELAY_S, 0.0)
        if failure.get("run") == self.run and time.time() - float(failure.get("at", 0)) < window:
            kind = storage.StorageUnavailable if failure.get("kind") == "store" else UserError
            raise kind(str(failure.get("message")))

    def recheck(self, url: str, key: str, size: int | None, checksum: str | None, version: str | None) -> bool:
        """Check the digest of entry `key` now (a sample in it did not decode); True if it was damaged (then it
        is discarded and counted, and the next fetch gets it again)."""
        local = self.path(key)
        if not shard_fetch.verifying() or not os.path.exists(local):
            return False
        self._checked.pop(local, None)
        with shard_fetch.local_faults(self.folder), file_lock.held(f"{local}.lock", wait=True):
            return not self._usable(local, shard_fetch.Expected(url, size, checksum, version), math.inf)

    def _discard(self, local: str) -> None:
        for path in (local, shard_fetch.record_path(local)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self._checked.pop(local, None)

    def make_room(self, size: int) -> None:
        """Remove the least recently used shards until `size` more bytes fit under the cap."""
        entries = []
        for name in os.listdir(self.folder):
            if name.endswith(_SUFFIX):
                try:
                    info = os.stat(os.path.join(self.folder, name))
                except FileNotFoundError:  # another process evicted it
                    continue
                entries.append((max(info.st_atime, info.st_mtime), info.st_size, name))
        total = sum(entry[1] for entry in entries)
        for _, nbytes, name in sorted(entries):
            if total + size <= self.cap_bytes:
                break
            try:
                os.remove(os.path.join(self.folder, name))
                total -= nbytes
            except FileNotFoundError:
                pass
            with contextlib.suppress(FileNotFoundError):
                os.remove(shard_fetch.record_path(os.path.join(self.folder, name)))
        if total + size > self.cap_bytes:
            log.warning("shard cache %s: a %.0f MB shard does not fit under its %.1f GB cap; raise "
                        "UNMIX_SHARD_CACHE_GB", self.folder, size / 2**20, self.cap_bytes / 2**30)


class OpenShards:
    """A few shard files kept open in this process, read with pread; the least recently used is closed."""

    def __init__(self, keep: int = 4, touch: bool = True) -> None:
        self.keep, self.touch = keep, touch
        self._files: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pid = os.getpid()

    def read(self, local: str, start: int, end: int) -> bytes:
        if self._pid != os.getpid():  # descriptors inherited over fork share their offsets: start afresh
            self._files, self._pid = collections.OrderedDict(), os.getpid()
        fd = self._files.pop(local, None)
        if fd is None:
            fd = os.open(local, os.O_RDONLY)
            if self.touch:
                os.utime(fd)  # marks it recently used for eviction
        self._files[local] = fd
        while len(self._files) > self.keep:
            os.close(self._files.popitem(last=False)[1])
        return os.pread(fd, end - start, start)

    def forget(self, local: str) -> None:
        fd = self._files.pop(local, None)
        if fd is not None:
            os.close(fd)


# --- fetching ahead ------------------------------------------------------------------------------------------


class Prefetchable(Protocol):
    def fetch_shard(self, shard: int, wait: bool) -> str | None: ...


class Prefetcher:
    """FETCH_THREADS background threads per process that fetch the shards asked for, earliest asked first; a
    shard already cached, or being fetched by another process, is skipped. What is asked is bounded by how far
    the sampler runs ahead of the readers (the DataLoader's prefetch_factor x workers batches) plus SHARDS_AHEAD.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a fork copies neither the threads nor a free lock

    def _reset(self) -> None:
        self._pending: collections.OrderedDict[tuple[int, int], Prefetchable] = collections.OrderedDict()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []

    def ahead(self, source: Prefetchable, shards: list[int]) -> None:
        with self._wake:
            if not self._threads:
                self._threads = [threading.Thread(target=self._run, name=f"shard-fetch-{n}", daemon=True)
                                 for n in range(FETCH_THREADS)]
                for thread in self._threads:
                    thread.start()
            for shard in shards:
                self._pending.setdefault((id(source), shard), source)
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                (_, shard), source = self._pending.popitem(last=False)
            try:
                source.fetch_shard(shard, wait=False)
            except Exception as error:  # left for the reader (ShardCache), which raises it when it gets there
                log.warning("fetching shard %d ahead failed (%s)", shard, storage.describe(error))


PREFETCHER = Prefetcher()


# --- linking a sampler to its source -------------------------------------------------------------------------

_SOURCES: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def register(source: Any) -> None:
    """Make `source` findable by a sampler built from its shard numbers (`source_for`)."""
    _SOURCES[id(source)] = source


def source_for(shard_of: np.ndarray) -> Any | None:
    """The most recently opened streaming source of this process whose samples lie in `shard_of`'s shards."""
    for source in reversed(list(_SOURCES.values())):
        if len(source) == len(shard_of) and np.array_equal(source.shard_numbers, shard_of):
            return source
    return None
