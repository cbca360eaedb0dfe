"""Every path the trainer reads or writes is an fsspec URL: a plain path, file://, s3:// and the rest.

S3 settings come only from the standard AWS environment (AWS_ENDPOINT_URL[_S3], AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION or an IRSA role); nothing here accepts or prints credentials.
Writes that must never be seen half-done go through `atomic_write_bytes`. Transient store errors are
retried with backoff (`with_retries`); a store that stays down raises `StorageUnavailable`.
"""

from __future__ import annotations

import io
import logging
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

# 8 attempts (UNMIX_STORAGE_RETRIES) with 1, 2, 4, ... 30 s (UNMIX_STORAGE_RETRY_DELAY first) between them
# ride out about 90 s of outage (plus botocore's own quick retries inside each attempt) before the run gives up.
RETRY_MAX_DELAY_S = 30.0


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
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `url` and the path inside it."""
    protocol = fsspec.utils.get_protocol(url)
    options = _s3_options() if protocol in ("s3", "s3a") else {}
    fs, path = fsspec.core.url_to_fs(url, **options)
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


def with_retries(action: Callable[[], T], what: str) -> T:
    """Run `action`, retrying transient storage errors with exponential backoff.

    Raises StorageUnavailable (one line naming `what` and the last error) when every attempt failed.
    """
    settings = env.current()
    attempts, delay = settings.storage_retries, settings.storage_retry_delay_s
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except PERMANENT_ERRORS:
            raise
        except _transient_errors() as error:
            reason = describe(error)
            if attempt == attempts:
                raise StorageUnavailable(
                    f"{what} failed {attempt} times over {time.monotonic() - started:.0f}s ({reason}); "
                    "the store is down or failing: check AWS_ENDPOINT_URL and the store, then rerun the same "
                    "command to resume") from error
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, reason, attempt, attempts - 1, delay)
            time.sleep(delay)
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
