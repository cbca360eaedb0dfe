"""The one error boundary of every command: an exception in, one line on stderr and an exit code out.

- UserError and the usual OS / object-store mistakes (a path that is a file or a folder or has no parent,
  permission or access denied, a missing bucket, bad credentials, out of memory) -> exit 2, the fix named.
- RetryableError (the store stayed down, another rank died or stalled, a read stalled) -> 138.
- Preempted (SIGTERM) -> 143.
- Anything else is unexpected -> exit 1, one line with the error and the path of a crash report that holds
  the full traceback (under the dump path, or a temp file when there is none); UNMIX_DEBUG=1 prints it too.
Messages never echo a credential: the values of the AWS secret variables are masked everywhere.
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable

from trainer import env
from trainer.errors import EXIT_CRASH, EXIT_USER_ERROR, Preempted, RetryableError, UserError

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
COLLECTIVE_MARKS = ("gloo", "NCCL", "Connection closed by peer", "Connection reset", "pair closure", "Timed out",
                    "ProcessGroup", "c10d")


def redact(text: str) -> str:
    """`text` with the value of every credential variable replaced by ***."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. An error re-raised from a DataLoader worker carries the worker's
    traceback as its message: its last line holds the original message."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if not lines[0].startswith("Caught "):
        return redact(lines[0])[:500]
    last = lines[-1]
    if isinstance(error, UserError | RetryableError | Preempted):  # our message is the whole line: drop its type
        last = last.removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")
    return redact(last)[:500]


def _os_error_fix(error: OSError, where: str | None) -> str | None:
    """The one-line user message for the OS / store errors a user's path or credentials cause, else None.
    `where` (the command's output location) names the path when the error does not (s3fs leaves it out)."""
    path = str(error.filename or where or "the path")
    text = redact(str(error.strerror or (error.args[0] if error.args else type(error).__name__)))
    if isinstance(error, NotADirectoryError):
        return f"{path}: a part of this path is a file, not a folder; pass a path whose parents are folders"
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder where a file is expected; pass the path of a file"
    if isinstance(error, FileExistsError):
        return f"{path} already exists (a file where a folder is expected?); remove it or pass another path"
    if isinstance(error, PermissionError):
        remote = "://" in path and not path.startswith("file://")
        if remote or "Access" in text or "Signature" in text or "Key" in text:
            return (f"access denied on {path} ({text}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the "
                    "pod's IAM role) and the bucket policy")
        return f"permission denied on {path}; make it writable/readable by this user or pass another path"
    if isinstance(error, FileNotFoundError):
        if "bucket does not exist" in text.lower() or "NoSuchBucket" in text:
            return f"{path}: the bucket does not exist ({text}); create it or fix the URL"
        return f"{path} does not exist (or its parent folder does not); check the path"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {path}; free space or pass another --dump_path"
    if error.errno == errno.EROFS:
        return f"{path} is on a read-only filesystem; pass a writable path"
    return None


def _is_collective_failure(error: BaseException) -> bool:
    """A failed or timed-out collective while several ranks run: another rank died or stalled."""
    if not env.current_or_defaults().is_distributed or not isinstance(error, RuntimeError):
        return False
    try:
        import torch.distributed as dist

        if isinstance(error, dist.DistError):
            return True
    except ImportError:
        pass
    frames = traceback.extract_tb(error.__traceback__)
    if any("/torch/distributed/" in f.filename or f.filename.endswith("/torch/nn/parallel/distributed.py")
           for f in frames):
        return True
    return any(mark in str(error) for mark in COLLECTIVE_MARKS)


def classify(error: BaseException, where: str | None = None) -> tuple[int, str] | None:
    """(exit code, one-line message) for every error that is not a bug; None for the unexpected."""
    if isinstance(error, UserError | RetryableError | Preempted):
        return error.exit_code, one_line(error)
    if type(error).__name__ in ("OutOfMemoryError", "MemoryError") or "out of memory" in str(error):
        return EXIT_USER_ERROR, (f"out of memory ({one_line(error)}); lower --batch_size or --workers, or give "
                                 "the job more memory")
    if isinstance(error, OSError):
        message = _os_error_fix(error, where)
        if message is not None:
            return EXIT_USER_ERROR, redact(message)
    text = str(error)
    if "DataLoader timed out" in text:
        return RetryableError.exit_code, (f"{one_line(error)}: a read stalled (a hung network filesystem or "
                                          "store); raise UNMIX_READ_TIMEOUT_S if reads are just slow")
    if "DataLoader worker" in text and "killed by signal" in text:
        return EXIT_USER_ERROR, (f"{one_line(error)}: usually /dev/shm or the memory limit is too small for the "
                                 "loader; raise the pod's shm_size / memory or lower --workers")
    if _is_collective_failure(error):
        return RetryableError.exit_code, (f"a collective operation failed ({one_line(error)}): another rank died "
                                          "or stalled past UNMIX_COLLECTIVE_TIMEOUT_MIN; its own log says why")
    return None


def write_crash_report(error: BaseException, report_dir: str | None) -> str:
    """The full traceback in `<report_dir>/crash-reports/` (any fsspec URL), else in a temp file; its path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"crash-{stamp}-{socket.gethostname()}-{os.getpid()}.txt"
    text = redact("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    text = f"unmix-swav {' '.join(sys.argv[1:2])} crashed at {stamp}\n{redact(' '.join(sys.argv))}\n\n{text}"
    if report_dir:
        try:
            from trainer import storage

            url = storage.join(report_dir, "crash-reports", name)
            storage.write_text(url, text)
            return url
        except Exception:  # the dump path itself may be what is broken: fall back to a local temp file
            pass
    handle, path = tempfile.mkstemp(prefix="unmix-swav-crash-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def report(error: BaseException, report_dir: str | None = None) -> int:
    """Print the one line for `error` and return its exit code (writing a crash report if unexpected)."""
    settings = env.current_or_defaults()  # the error may be the environment's own
    prefix = f"error: rank {settings.rank}: " if settings.is_distributed else "error: "
    known = classify(error, report_dir)
    if known is not None:
        code, message = known
        if code == RetryableError.exit_code:
            message += f"; exiting {code} so that the job restarts and resumes from the last checkpoint"
        print(prefix + message, file=sys.stderr, flush=True)
        return code
    path = write_crash_report(error, report_dir)
    if settings.debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    print(f"{prefix}unexpected {type(error).__name__}: {one_line(error)}; this is a bug or a case we do not "
          f"handle yet: the full traceback is in {path} (UNMIX_DEBUG=1 prints it here)", file=sys.stderr,
          flush=True)
    return EXIT_CRASH


def run_guarded(action: Callable[[], object], report_dir: Callable[[], str | None] | str | None = None) -> int:
    """Run `action`; its exit code: 0, or what `report` says for the exception that ended it.

    `report_dir` (or a function giving it, for a dump path known only once flags are parsed) is where a
    crash report goes.
    """
    try:
        action()
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); rerun the same command to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit as done:  # argparse's usage errors (2) and explicit exits pass through
        return done.code if isinstance(done.code, int) else (0 if done.code is None else EXIT_USER_ERROR)
    except BaseException as error:  # noqa: BLE001 - this is the boundary
        where = report_dir() if callable(report_dir) else report_dir
        return report(error, where)
    return 0
