"""Worker processes a command owns: they end with it, however it ends.

A process pool's workers wait for tasks on a pipe that they hold open themselves, so a parent that dies leaves
them waiting forever, and a parent stopped by an exception waits (in the pool's `with`) for every queued task.
`owned_process_pool` gives a pool whose workers
- die with the parent (Linux: prctl(PR_SET_PDEATHSIG, SIGKILL), set before a worker takes any task; the pool
  starts its workers from the calling thread, whose end is what the kernel watches: call it from the main one),
- ignore SIGINT (Ctrl-C reaches the whole foreground group; the parent decides, then stops them) and take
  SIGTERM's default action (a forked worker would otherwise inherit the parent's Python handler),
- are stopped at once when the pool's block ends with an exception (SIGTERM, then SIGKILL after `grace_s`).
`sigterm_raises` turns SIGTERM into Preempted (exit 143 at the error boundary) while a command runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from trainer.errors import Preempted

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_GRACE_S = 5.0


def _die_with_parent(parent_pid: int) -> None:
    """The initializer of every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect: nobody will signal us
        os._exit(1)


def stop_workers(processes: list[multiprocessing.Process], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every live worker, SIGKILL to those alive after `grace_s`; returns once all are reaped
    (at most grace_s + a join per worker)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


@contextlib.contextmanager
def owned_process_pool(workers: int, grace_s: float = STOP_GRACE_S) -> Iterator[ProcessPoolExecutor]:
    """A fork ProcessPoolExecutor of `workers` processes that end with this process (see the module)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        # The executor has no public way to stop its workers before Python 3.14 (terminate_workers).
        processes = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers(processes, grace_s)
        raise
    pool.shutdown()


@contextlib.contextmanager
def sigterm_raises(message: str) -> Iterator[None]:
    """Within the block, SIGTERM raises Preempted(message) in the main thread; the old handler is restored."""
    def _handle(signum: int, frame: object) -> None:
        raise Preempted(message)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
