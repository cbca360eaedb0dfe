"""One shard from the store into a local file, as verified bytes, and the digest record kept beside it.

A shard is hashed (sha256) while its parts stream in, in order, so a cache entry is never read back to be
checked at publish. What it is checked against (`Expected`): a staged shard's size and sha256 from the
manifest; a WebDataset shard's size and version (the store's ETag) as they were when it was indexed. On S3 the
parts are ranged GETs conditioned on the ETag seen when the shard was opened (If-Match), so an object replaced
during the download fails instead of mixing two versions. The digest record (`<entry>.sha256`, JSON) is
written before the entry is published and says when its digest was last checked.

Errors name the shard: missing from the store, changed since staging (both exit 2); local faults under the
cache (no space, read-only, no permission) are exit 2 naming the cache folder; only store failures are
retried (storage.with_retries) and end in StorageUnavailable (138).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec

from trainer import env, storage
from trainer.errors import UserError

_USER_FAULTS = storage.LOCAL_FAULTS | {errno.EACCES, errno.EPERM}


def verifying() -> bool:
    """`UNMIX_VERIFY_SHARDS=0` turns hashing and digest records off (an entry is reused on sight, as before):
    for measuring what verification costs, not for production runs."""
    return env.current().verify_shards


@dataclass(frozen=True)
class Expected:
    """What shard `url` must be: `size` and `sha256` (staged), or `version`, the archive key its index was
    made from (WebDataset: URL, size and ETag; `archive_key`)."""

    url: str
    size: int | None = None
    sha256: str | None = None
    version: str | None = None

    @property
    def staged(self) -> bool:
        return self.version is None

    def restage_hint(self) -> str:
        return ("restage the dataset (unmix-swav stage) from its source, or put the staged shard back"
                if self.staged else "rerun the command to index the shard set again")


class Damaged(Exception):
    """A cache entry failed its check: why, for the log."""


class _Replaced(Exception):
    """The object is no longer the version opened (HTTP 412 on If-Match): not an OSError, so never retried."""


def changed(expected: Expected, what: str) -> UserError:
    since = "it was staged" if expected.staged else "it was indexed"
    return UserError(f"shard {expected.url} changed in the store since {since} ({what}); {expected.restage_hint()}")


def denied(url: str, error: OSError) -> UserError:
    """The store refused access (not the local cache: local_faults must not take it for a cache fault)."""
    return UserError(f"access denied reading shard {url} ({storage.describe(error)}); check AWS_ACCESS_KEY_ID / "
                     "AWS_SECRET_ACCESS_KEY (or the pod's IAM role) and the bucket policy")


def missing(url: str) -> UserError:
    return UserError(f"shard {url} is missing from the store (deleted or moved after the dataset was staged or "
                     "indexed); put it back, or restage the dataset")


def check_listed(urls: list[str], sizes: list[int]) -> None:
    """Refuse, before any work, a shard missing from the store or of another size than staged: one listing per
    folder of shards (a few requests for thousands of shards), not one per shard."""
    folders: dict[str, list[tuple[str, int]]] = {}
    for url, size in zip(urls, sizes, strict=True):
        folders.setdefault(url.rsplit("/", 1)[0], []).append((url, size))
    for folder, shards in folders.items():
        fs, path = storage.filesystem(folder)
        try:
            listing = storage.with_retries(lambda fs=fs, path=path: fs.ls(path, detail=True),
                                           f"listing the shards in {folder}")
        except FileNotFoundError:
            listing = []
        found = {str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]: entry.get("size") for entry in listing}
        for url, size in shards:
            name = url.rsplit("/", 1)[-1]
            if name not in found:
                raise missing(url)
            if found[name] is not None and int(found[name]) != size:
                raise changed(Expected(url, size), f"{found[name]} bytes, {size} expected")


@contextlib.contextmanager
def local_faults(folder: str) -> Iterator[None]:
    """Turn no space, read-only and permission errors of local file work under `folder` into one UserError."""
    try:
        yield
    except OSError as error:
        if error.errno not in _USER_FAULTS:
            raise
        raise UserError(f"shard cache {folder}: {os.strerror(error.errno)} ({storage.describe(error)}); free "
                        "space there or lower UNMIX_SHARD_CACHE_GB, or set UNMIX_SHARD_CACHE to a writable "
                        "folder with room (=off: no cache)") from error


def download(expected: Expected, tmp: str, part_bytes: int, concurrency: int) -> tuple[str, int, int]:
    """Write shard `expected.url` to `tmp`; (sha256 or "" when VERIFY is off, size, GET requests made).
    Raises UserError if it is missing or not what `expected` says, StorageUnavailable if the store fails."""
    fs, path = storage.filesystem(expected.url)
    handle = _open(fs, path, expected.url, part_bytes)
    try:
        size = int(handle.size)
        _check_identity(fs, path, handle, size, expected)
        digest = hashlib.sha256() if verifying() else None
        ranges = [(start, min(start + part_bytes, size)) for start in range(0, size, part_bytes)] or [(0, 0)]
        with open(tmp, "wb") as out:
            for data in _parts(fs, path, handle, ranges, concurrency, expected):
                if digest is not None:
                    digest.update(data)
                out.write(data)
        return (digest.hexdigest() if digest is not None else ""), size, len(ranges)
    finally:
        handle.close()


def archive_key(url: str, info: dict[str, Any]) -> str:
    """URL, size and version (ETag, else modification time) of an archive from its fsspec `info`."""
    version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{url} size={info.get('size')} version={version}"


def _open(fs: fsspec.AbstractFileSystem, path: str, url: str, part_bytes: int) -> Any:
    try:
        return storage.with_retries(lambda: fs.open(path, "rb", block_size=part_bytes, cache_type="none"),
                                    f"opening shard {url}")
    except FileNotFoundError as error:
        raise missing(url) from error
    except PermissionError as error:
        raise denied(url, error) from error


def _check_identity(fs: fsspec.AbstractFileSystem, path: str, handle: Any, size: int, expected: Expected) -> None:
    if expected.size is not None and size != expected.size:
        raise changed(expected, f"{size} bytes, {expected.size} expected")
    if expected.version is not None:
        info = getattr(handle, "details", None) or fs.info(path)
        now = archive_key(expected.url, info)
        if now != expected.version:
            raise changed(expected, f"now {now.removeprefix(expected.url).strip()}")


def _parts(fs: fsspec.AbstractFileSystem, path: str, handle: Any, ranges: list[tuple[int, int]],
           concurrency: int, expected: Expected) -> Iterator[bytes]:
    """The bytes of `ranges`, in order, at most `concurrency` requests in flight."""

    def read(start: int, end: int) -> bytes:
        try:
            return storage.with_retries(lambda: _read_range_once(fs, path, handle, start, end),
                                        f"fetching shard {expected.url} (bytes {start}-{end})")
        except FileNotFoundError as error:
            raise missing(expected.url) from error
        except PermissionError as error:
            raise denied(expected.url, error) from error
        except _Replaced as error:
            raise changed(expected, "replaced while it was read") from error

    if len(ranges) == 1:
        yield read(*ranges[0])
        return
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="shard-part")
    try:
        pending: list[Future[bytes]] = [pool.submit(read, *part) for part in ranges[:concurrency]]
        for following in [*ranges[concurrency:], *[None] * concurrency]:
            if not pending:
                break
            data = pending.pop(0).result()
            if following is not None:
                pending.append(pool.submit(read, *following))
            yield data
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed part: the others in flight end on their own


def _read_range_once(fs: fsspec.AbstractFileSystem, path: str, handle: Any, start: int, end: int) -> bytes:
    try:
        return _read_range(fs, path, handle, start, end)
    except OSError as error:
        if _is_precondition_failure(error):
            raise _Replaced(str(error)) from error
        raise


def _read_range(fs: fsspec.AbstractFileSystem, path: str, handle: Any, start: int, end: int) -> bytes:
    if start == end:
        return b""
    if isinstance(handle, fsspec.spec.AbstractBufferedFile):  # s3fs & co: If-Match on the ETag opened
        data = handle._fetch_range(start, end)
    else:
        data = fs.cat_file(path, start=start, end=end)
    if len(data) != end - start:  # a cut transfer: transient, retried
        raise OSError(errno.EIO, f"short read: {len(data)} of {end - start} bytes of {path}")
    return data


def _is_precondition_failure(error: OSError) -> bool:
    return type(error).__name__ == "FileExpired" or "pre-condition" in str(error).lower()


# --- the digest record beside each entry -------------------------------------------------------------------


def record_path(local: str) -> str:
    return f"{local}.sha256"


def write_record(local: str, sha256: str, size: int) -> None:
    """The entry's digest and size, and when they were last checked, replaced atomically."""
    tmp = f"{record_path(local)}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w") as handle:
            json.dump({"sha256": sha256, "size": size, "checked_at": time.time()}, handle)
        os.replace(tmp, record_path(local))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def check_entry(local: str, expected: Expected, trusted_since: float) -> None:
    """Raise Damaged unless entry `local` is whole: its size always; its digest against the record (and the
    manifest's) unless the record says it was checked since `trusted_since` (by this run, on this host)."""
    try:
        with open(record_path(local)) as handle:
            record = json.load(handle)
        sha256, size, checked_at = str(record["sha256"]), int(record["size"]), float(record["checked_at"])
    except FileNotFoundError:
        raise Damaged("no digest record beside it") from None
    except (ValueError, KeyError, TypeError) as error:
        raise Damaged(f"its digest record is unreadable ({error})") from None
    actual = os.path.getsize(local)
    if actual != size or (expected.size is not None and size != expected.size):
        raise Damaged(f"{actual} bytes, {expected.size if expected.size is not None else size} expected")
    if expected.sha256 is not None and sha256 != expected.sha256:
        raise Damaged("its digest record is not the manifest's")
    if checked_at >= trusted_since:
        return
    if file_sha256(local) != sha256:
        raise Damaged("its content does not match its digest")
    write_record(local, sha256, size)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**22):
            digest.update(block)
    return digest.hexdigest()
