"""For tests of what a fork copies: a child started as DataLoader starts its workers on Linux (fork), killed on the
way out if it still runs, so that a test failing while the child waits leaves no process behind."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess

FORK = multiprocessing.get_context("fork")  # make the child's Queue and Event from this context


@contextlib.contextmanager
def forked_child(target: Callable[..., None], *args: object) -> Iterator[BaseProcess]:
    child = FORK.Process(target=target, args=args)
    child.start()
    try:
        yield child
    finally:
        if child.is_alive():
            child.kill()
        child.join()
