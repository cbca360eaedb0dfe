"""Every path the trainer reads or writes is an fsspec URL: a plain path, file://, s3:// and the rest.

S3 settings come only from the standard AWS environment (AWS_ENDPOINT_URL[_S3], AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION or an IRSA role); nothing here accepts or prints credentials.
Writes that must never be seen half-done go through `atomic_write_bytes`. Files the product writes and
later trusts go through `write_verified` / `read_verified` (and `save_torch` / `load_torch` on them): a
sha256 sidecar recorded at write time, checked on every read (docs/integrity.md). Transient store errors are
retried with backoff (`with_retries`); a store that stays down raises `StorageUnavailable`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import torch

from trainer import env
from trainer.errors import RetryableError, UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

# 8 attempts (UNMIX_STORAGE_RETRIES) with 1, 2, 4, ... 30 s (UNMIX_STORAGE_RETRY_DELAY first) between them ride
# out about 90 s of outage before the run gives up. These are the only retries: s3fs and botocore make one attempt
# per call (`_s3_options`), so that the bound in `with_retries` is the whole wait.
RETRY_MAX_DELAY_S = 30.0
# Per S3 request: connecting, and each wait for bytes of the answer (botocore's connect / read timeouts).
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0
# Local errors (the disk under a cache or a temp file): the user's to fix, never worth a retry.
LOCAL_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class StorageUnavailable(RetryableError, OSError):
    """The store kept failing through every retry. Transient by nature: a restarted job may succeed."""


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth retrying: OS-level I/O errors (s3fs maps 5xx and SlowDown to OSError) and botocore's
    connection and HTTP-client errors (endpoint down, connection reset, timeouts), which are not OSErrors."""
    errors: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no S3 support installed: only local and other fsspec errors
        return errors
    return (*errors, BotoConnectionError, HTTPClientError)


PERMANENT_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
                    UserError, StorageUnavailable)


def _s3_options() -> dict[str, Any]:
    """s3fs options: the endpoint, and botocore making exactly one attempt per request (`total_max_attempts` 1
    in standard mode; legacy mode would add 4 retries, standard 2, each with its own backoff) bounded by
    CONNECT_TIMEOUT_S and READ_TIMEOUT_S (botocore's default is 60 s each)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"},
                                                 "connect_timeout": CONNECT_TIMEOUT_S,
                                                 "read_timeout": READ_TIMEOUT_S}}
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `url` and the path inside it. On S3, s3fs's own retry loop (5 tries of every
    call, SlowDown included, with up to 15 s between them) is cut to one try: `with_retries` is the one budget."""
    protocol = fsspec.utils.get_protocol(url)
    options = _s3_options() if protocol in ("s3", "s3a") else {}
    fs, path = fsspec.core.url_to_fs(url, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = 1  # a class attribute in s3fs, not a constructor argument
    return fs, path


def is_local(url: str) -> bool:
    return fsspec.utils.get_protocol(url) in ("file", "local")


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def check_relative(relative: object, what: str) -> str:
    """`relative` (a path read from a data file: a manifest's shard, an index entry, an annotation's file name)
    if it names a place inside whatever folder it is relative to; else UserError naming `what` (the file and
    the entry). Refused: empty, absolute (`/x`, `C:`), a scheme (`s3://`, fsspec's `::` chains), or a `..`."""
    text = relative if isinstance(relative, str) else ""
    parts = text.replace("\\", "/").split("/")
    if (not text or text.startswith(("/", "\\")) or "://" in text or "::" in text or "\x00" in text
            or re.match(r"^[A-Za-z]:", text) or ".." in parts):
        raise UserError(f"{what}: {relative!r} is not a relative path inside the dataset; entries must not be "
                        "absolute, hold '..' or a scheme (the file was damaged or made for another layout)")
    return text


def child_url(root: str, relative: object, what: str) -> str:
    """`root`/`relative` for a path read from a data file, refused (check_relative) unless it stays in `root`."""
    return join(root, check_relative(relative, what))


# When an operation of this run last spent its whole retry budget, and until when that counts (the budget's
# sleeps later), in time.monotonic() (system-wide on Linux): shared memory made at import, so forked loader
# workers and the main process see each other's.
_GAVE_UP = multiprocessing.RawArray("d", [-math.inf, -math.inf])


def _give_up() -> None:
    now, settings = time.monotonic(), env.current()
    _GAVE_UP[0], _GAVE_UP[1] = now, now + retry_bound_s(settings.storage_retries, settings.storage_retry_delay_s,
                                                        RETRY_MAX_DELAY_S, 0.0)


def _spent_elsewhere() -> float | None:
    """Seconds since an operation of this run spent its budget, if that is within the budget's sleeps."""
    now = time.monotonic()
    return now - _GAVE_UP[0] if now < _GAVE_UP[1] else None


def _backoff(delay: float) -> None:
    """Sleep `delay` seconds, or less when another operation of this run spends its budget meanwhile."""
    until = time.monotonic() + delay
    while (left := until - time.monotonic()) > 0 and _spent_elsewhere() is None:
        time.sleep(min(left, 0.25))


def retry_bound_s(attempts: int, first_delay_s: float, max_delay_s: float, request_s: float) -> float:
    """The longest `with_retries` can take when every attempt fails: see its docstring."""
    sleeps = sum(min(first_delay_s * 2**i, max_delay_s) for i in range(attempts - 1))
    return attempts * request_s + sleeps


def with_retries(action: Callable[[], T], what: str) -> T:
    """Run `action`, retrying transient storage errors with exponential backoff.

    Raises StorageUnavailable (one line naming `what` and the last error) when every attempt failed. Local
    faults (no space, read-only filesystem) and PERMANENT_ERRORS are raised at once. Bound, with N =
    UNMIX_STORAGE_RETRIES, d = UNMIX_STORAGE_RETRY_DELAY, D = RETRY_MAX_DELAY_S and t the time of one failing attempt:

        total <= N * t + sum(min(d * 2**i, D) for i in 0 .. N-2)          (`retry_bound_s`)

    where one S3 request makes one attempt (`_s3_options`), so t <= CONNECT_TIMEOUT_S + READ_TIMEOUT_S for a
    store that hangs, and t is one round trip for a store that answers 503 / SlowDown. Defaults: N=8, d=1 s,
    D=30 s: sleeps 1+2+4+8+16+30+30 = 91 s; total <= 91 s + 8 round trips in a 503 storm, <= 291 s when every
    request times out. An operation of several requests in parallel (a shard's parts) spends them together.

    One budget per outage, not per operation: once an operation of this run (this process or its forked
    loader workers, e.g. a background shard fetch) has spent its budget, every other one that fails within
    the budget's sleeps after that raises at its next failed attempt (waking early from its backoff), so
    overlapping operations end within one budget of the first one's start, plus t.
    """
    attempts, delay = 0, 0.0  # read at the first failure: the first attempt is on the path of every image read
    started = time.monotonic()
    for attempt in itertools.count(1):
        try:
            return action()
        except PERMANENT_ERRORS:
            raise
        except _transient_errors() as error:
            if isinstance(error, OSError) and error.errno in LOCAL_FAULTS:
                raise
            if not attempts:
                settings = env.current()
                attempts, delay = settings.storage_retries, settings.storage_retry_delay_s
            reason = describe(error)
            spent = _spent_elsewhere()
            if attempt == attempts or spent is not None:
                _give_up()
                elsewhere = (f"; another operation of this run spent the retry budget {spent:.0f}s ago"
                             if spent is not None else "")
                tries = f"{attempt} time{'s' * (attempt != 1)}"
                raise StorageUnavailable(
                    f"{what} failed {tries} over {time.monotonic() - started:.0f}s ({reason}{elsewhere}); "
                    "the store is down or failing: check AWS_ENDPOINT_URL and the store, then rerun the same "
                    "command to resume") from error
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, reason, attempt, attempts - 1, delay)
            _backoff(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
        except Exception as error:
            if type(error).__name__ == "NoCredentialsError":  # botocore's, without importing botocore here
                raise UserError(f"{what}: no S3 credentials were found; set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or give the pod an IAM role (IRSA)") from error
            raise
    raise AssertionError("unreachable")  # itertools.count never ends


def describe(error: BaseException) -> str:
    """`Type: first line of the message`, at most 200 characters: for one-line error reports."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()  # torch bolds some words
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return with_retries(lambda: fs.exists(path), f"checking {url}")


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if is_local(url):
        os.makedirs(path, exist_ok=True)
    # Object stores have no directories: nothing to create.


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return with_retries(lambda: fs.cat_file(path), f"reading {url}")


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write `data` so that readers see the old object or the complete new one, never a torn file.

    Locally: a temporary file in the same folder, fsync, then rename. On object storage: one PUT of the
    complete object, which the store makes visible atomically.
    """
    fs, path = filesystem(url)
    if is_local(url):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with_retries(lambda: fs.pipe_file(path, data), f"writing {url}")


def write_text(url: str, text: str) -> None:
    atomic_write_bytes(url, text.encode("utf-8"))


# --- Verified files: a sha256 sidecar beside each file, written with it and checked on every read
# (`write_verified` says why a sidecar and how the pair stays consistent through a crash; docs/integrity.md).

DIGEST_SUFFIX = ".sha256"
DIGEST_FORMAT = "unmix-swav sha256 sidecar v1"
_warned_unverified: set[str] = set()


class IntegrityError(UserError):
    """The bytes at a URL are not what was written there: a digest mismatch, a damaged sidecar, or a
    checkpoint torch cannot load. Callers that hold another copy (resume, caches) catch this one."""


def digest_url(url: str) -> str:
    """The sidecar that records the sha256 of the file at `url`."""
    return url + DIGEST_SUFFIX


def _fingerprint(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _is_fingerprint(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
            and isinstance(entry.get("size"), int) and not isinstance(entry.get("size"), bool))


def _read_record(url: str) -> list[dict[str, Any]] | None:
    """The fingerprints the sidecar of `url` accepts, or None when it has no sidecar; IntegrityError when the
    sidecar is damaged (a file cannot be trusted by a record that cannot be read)."""
    record_url = digest_url(url)
    fs, path = filesystem(record_url)
    try:
        data = with_retries(lambda: fs.cat_file(path), f"reading {record_url}")
    except FileNotFoundError:
        return None
    try:
        accepted = json.loads(data)["accept"]
    except (ValueError, KeyError, TypeError):
        accepted = None
    if not isinstance(accepted, list) or not accepted or not all(_is_fingerprint(e) for e in accepted):
        raise IntegrityError(f"the digest record {record_url} is damaged (not a list of sha256 digests), so "
                             f"{url} cannot be verified; restore both from a copy, or delete {record_url} to "
                             "use the file unverified")
    return [{"sha256": e["sha256"], "size": e["size"]} for e in accepted]


def _write_record(url: str, accepted: list[dict[str, Any]]) -> None:
    record = {"format": DIGEST_FORMAT, "file": url.rstrip("/").rsplit("/", 1)[-1], "accept": accepted}
    atomic_write_bytes(digest_url(url), (json.dumps(record, indent=1) + "\n").encode("utf-8"))


def _remove_record(url: str) -> None:
    fs, path = filesystem(digest_url(url))
    with contextlib.suppress(FileNotFoundError):
        with_retries(lambda: fs.rm_file(path), f"deleting {digest_url(url)}")


def _publish(url: str, new: list[dict[str, Any]] | None, put: Callable[[], None]) -> None:
    """Run `put`, which replaces the file at `url` by one whose fingerprint is in `new` (None: unknown), so
    that its sidecar accepts the file at every moment (the steps are in `write_verified`'s docstring)."""
    try:
        old = _read_record(url)
    except IntegrityError:
        old = None  # a damaged sidecar is replaced with the file it records
    if new is None:
        if old is not None:
            _remove_record(url)
        put()
        return
    if old is None:
        put()
        _write_record(url, new)
        return
    transition = [*new, *(entry for entry in old if entry not in new)]
    if transition != old:
        _write_record(url, transition)
    put()
    if transition != new:
        _write_record(url, new)


def write_verified(url: str, data: bytes | str) -> None:
    """Write `data` atomically with a sha256 sidecar `<url>.sha256` that `read_verified` checks (str as UTF-8).

    Why a sidecar and not object metadata: a sidecar is a plain file, so it works the same on local paths and
    every fsspec store, and it travels with the file through `cp -r`, `aws s3 cp --recursive` and `aws s3
    sync`; a local copy drops S3 metadata, local files have none, and S3 metadata cannot change without
    rewriting the object. The cost is a second small object per file.

    A file and its sidecar cannot be replaced in one atomic step, so the sidecar lists every digest the file
    may hold while it changes: first the sidecar lists the new digest and the ones it listed, then the file
    is replaced atomically, then the sidecar keeps only the new digest. A crash between any two steps leaves
    a file whose digest is listed: a good file is never refused, a damaged one always is. With no sidecar yet
    (a new file, or one written before digests existed) the file goes first and its sidecar after: a crash
    in between leaves a file without a sidecar, which loads unverified as any such file does.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    _publish(url, [_fingerprint(payload)], lambda: atomic_write_bytes(url, payload))


def read_verified(url: str, unrecorded_ok: bool = False) -> bytes:
    """The bytes at `url`, checked against its sidecar; IntegrityError (one line, both digests) on a mismatch.

    A file without a sidecar (written before digests existed, or copied without it) is returned with one
    warning naming it unverified; `unrecorded_ok` drops the warning for files users may write themselves.
    A mismatch is read once more before it is refused: a reader that raced one rewrite sees the new pair.
    """
    for _ in range(2):
        data = read_bytes(url)
        accepted = _read_record(url)
        if accepted is None:
            if not unrecorded_ok and url not in _warned_unverified:
                _warned_unverified.add(url)
                log.warning("%s has no digest record (%s): it is used unverified", url, digest_url(url))
            return data
        found = _fingerprint(data)
        if found in accepted:
            return data
    expected = " or ".join(f"{e['sha256'][:12]}.. ({e['size']} bytes)" for e in accepted)
    raise IntegrityError(f"{url} is damaged: its sha256 is {found['sha256'][:12]}.. ({found['size']} bytes) but "
                         f"{digest_url(url)} recorded {expected}; restore it from a copy or rerun the step that "
                         "wrote it")


def copy_verified(source: str, dest: str) -> None:
    """Copy the file at `source` to `dest` with its digest record, without reading it through this process:
    a server-side copy on object stores, a hard link (else a copy) locally. `source` is not verified here;
    its record travels with it, so a damaged source stays detectable at `dest`."""
    try:
        accepted = _read_record(source)
    except IntegrityError:
        accepted = None
    src_fs, src_path = filesystem(source)
    _, dest_path = filesystem(dest)

    def put() -> None:
        if is_local(source) and is_local(dest):
            _local_copy(src_path, dest_path)
        else:
            with_retries(lambda: src_fs.copy(src_path, dest_path), f"copying {source} to {dest}")

    _publish(dest, accepted, put)


def _local_copy(source: str, dest: str) -> None:
    """Replace `dest` by the file at `source` atomically: a hard link (files here are always replaced by a
    rename, never rewritten in place, so the two names never share a later write), else a copy."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(dest)), f".{os.path.basename(dest)}.{uuid.uuid4().hex}.tmp")
    try:
        os.link(source, tmp)
    except OSError:  # a filesystem without hard links
        with open(source, "rb") as handle:
            atomic_write_bytes(dest, handle.read())
        return
    try:
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj: Any, url: str) -> None:
    """torch.save to any URL, atomically and with a digest (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_verified(url, buffer.getvalue())


def load_torch(url: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True of verified bytes; a missing file is one UserError, a damaged or
    unloadable one an IntegrityError, each one line naming the file."""
    if not exists(url):
        raise UserError(f"checkpoint {url} does not exist; pass the URL of a file written by unmix-swav")
    data = read_verified(url)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise IntegrityError(f"checkpoint {url} could not be loaded ({describe(error)}); it is truncated, corrupt, "
                             "not a PyTorch checkpoint, or holds objects other than tensors and plain values"
                             ) from error
