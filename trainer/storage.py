"""Every path the trainer reads or writes is an fsspec URL: a plain path, file://, s3:// and the rest.

S3 settings come only from the standard AWS environment (AWS_ENDPOINT_URL[_S3], AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION or an IRSA role); nothing here accepts or prints credentials.
Writes that must never be seen half-done go through `atomic_write_bytes`. Transient store errors are
retried with backoff (`with_retries`); a store that stays down raises `StorageUnavailable`.
"""

from __future__ import annotations

import errno
import io
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

from trainer.errors import RetryableError, UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

# 8 attempts with 1, 2, 4, ... 30 s between them ride out about 90 s of outage before the run gives up. These
# are the only retries: s3fs and botocore make one attempt per call (`_s3_options`), so that the bound in
# `with_retries` is the whole wait.
RETRY_ATTEMPTS = int(os.environ.get("UNMIX_STORAGE_RETRIES", "8"))
RETRY_FIRST_DELAY_S = float(os.environ.get("UNMIX_STORAGE_RETRY_DELAY", "1.0"))
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


# When an operation of this run last spent its whole retry budget, and until when that counts (the budget's
# sleeps later), in time.monotonic() (system-wide on Linux): shared memory made at import, so forked loader
# workers and the main process see each other's.
_GAVE_UP = multiprocessing.RawArray("d", [-math.inf, -math.inf])


def _give_up() -> None:
    now = time.monotonic()
    _GAVE_UP[0], _GAVE_UP[1] = now, now + retry_bound_s(RETRY_ATTEMPTS, RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S, 0.0)


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
    RETRY_ATTEMPTS, d = RETRY_FIRST_DELAY_S, D = RETRY_MAX_DELAY_S and t the time of one failing attempt:

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
    delay = RETRY_FIRST_DELAY_S
    started = time.monotonic()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return action()
        except PERMANENT_ERRORS:
            raise
        except _transient_errors() as error:
            if isinstance(error, OSError) and error.errno in LOCAL_FAULTS:
                raise
            reason = describe(error)
            spent = _spent_elsewhere()
            if attempt == RETRY_ATTEMPTS or spent is not None:
                _give_up()
                elsewhere = (f"; another operation of this run spent the retry budget {spent:.0f}s ago"
                             if spent is not None else "")
                raise StorageUnavailable(
                    f"{what} failed {attempt} times over {time.monotonic() - started:.0f}s ({reason}{elsewhere}); "
                    "the store is down or failing: check AWS_ENDPOINT_URL and the store, then rerun the same "
                    "command to resume") from error
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, reason, attempt, RETRY_ATTEMPTS - 1, delay)
            _backoff(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
        except Exception as error:
            if type(error).__name__ == "NoCredentialsError":  # botocore's, without importing botocore here
                raise UserError(f"{what}: no S3 credentials were found; set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or give the pod an IAM role (IRSA)") from error
            raise
    raise AssertionError("unreachable")


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


def save_torch(obj: Any, url: str) -> None:
    """torch.save to any URL, atomically (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(url, buffer.getvalue())


def load_torch(url: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; a missing or unreadable file is one clear UserError."""
    if not exists(url):
        raise UserError(f"checkpoint {url} does not exist; pass the URL of a file written by unmix-swav")
    data = read_bytes(url)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise UserError(f"checkpoint {url} could not be loaded ({describe(error)}); it is truncated, corrupt, "
                        "not a PyTorch checkpoint, or holds objects other than tensors and plain values") from error
