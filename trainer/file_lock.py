"""An exclusive lock on a local file between the processes of one host, safe across fork.

A flock belongs to the open file, and a fork copies the descriptor but not the thread that would close it. Closing
releases the lock only when the last copy closes, so a DataLoader worker forked while another thread of its parent
held a lock (the prefetcher downloading a shard, the run lock's heartbeat) would keep it for as long as it lives,
and the next process to ask for it, the worker itself included, would wait that long. So the holder releases the
lock explicitly (LOCK_UN releases it for every copy) before it closes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


@contextlib.contextmanager
def held(path: str, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created if absent, never removed: removing a locked file lets a waiter
    lock an unlinked inode). Yields True, or False holding nothing when `wait` is False and another has it; a
    wait lasts as long as the holder's work, which the caller bounds."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
