"""trainer/file_lock.py: a process forked while another thread of its parent holds a lock (a DataLoader worker
started while the prefetcher downloads a shard) does not keep that lock: real flocks, a real fork."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from forked import FORK, forked_child

from trainer import file_lock

BOUND_S = 20.0  # generous for a fork and two flocks on a loaded 2-core machine; the bug waits forever


def _child(path: str, parent_released: multiprocessing.Event, answers: multiprocessing.Queue) -> None:
    with file_lock.held(path, wait=False) as got:
        answers.put(("while the parent holds it", got))
    parent_released.wait(BOUND_S)
    started = time.monotonic()
    with file_lock.held(path) as got:  # before the fix: waits on the copy of the parent's lock it inherited
        answers.put(("after the parent released it", got, time.monotonic() - started))


@pytest.mark.slow
def test_a_child_forked_while_a_thread_holds_the_lock_takes_it_once_the_parent_releases_it(tmp_path: Path) -> None:
    path = str(tmp_path / "entry.lock")
    holding, forked = threading.Event(), threading.Event()

    def hold_until_forked() -> None:
        with file_lock.held(path) as got:
            assert got
            holding.set()
            forked.wait(BOUND_S)

    holder = threading.Thread(target=hold_until_forked)
    holder.start()
    assert holding.wait(BOUND_S)
    released, answers = FORK.Event(), FORK.Queue()
    try:
        with forked_child(_child, path, released, answers) as child:
            assert answers.get(timeout=BOUND_S) == ("while the parent holds it", False)  # still the parent's
            forked.set()
            holder.join(BOUND_S)
            released.set()
            what, got, waited_s = answers.get(timeout=BOUND_S)
            assert (what, got) == ("after the parent released it", True) and waited_s < BOUND_S
            child.join(BOUND_S)
            assert child.exitcode == 0
    finally:
        forked.set()
    with file_lock.held(path, wait=False) as got:  # and nobody holds it now
        assert got
