"""The `slow` mark says what a test costs: every test that starts a process (a subprocess, a server, torchrun,
a multiprocessing pool or DataLoader workers, the local pipeline) carries it, so `make test-fast`
(`-m "not slow"`) starts none. Tests that use the S3 server are marked here; any other test that starts a
process without the mark fails the run, naming it."""

from __future__ import annotations

import multiprocessing.process
import subprocess
from collections.abc import Iterator

import pytest
import torch  # noqa: F401 (its import runs `ldconfig -p` once, through cuda's library finder: not a test's process)

# Shared fixtures that start a process (a server, a torchrun run): every test using one is slow, not only the first.
SERVER_FIXTURES = ("s3_server", "mlflow_server", "two_process_run")

_current: list[str] = []
_started: set[str] = set()
_marked: set[str] = set()


def _recording(original):
    def start(*args, **kwargs):
        if _current:
            _started.add(_current[-1])
        return original(*args, **kwargs)
    return start


subprocess.Popen.__init__ = _recording(subprocess.Popen.__init__)
multiprocessing.process.BaseProcess.start = _recording(multiprocessing.process.BaseProcess.start)


def mark_servers_slow(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SERVER_FIXTURES):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow"):
            _marked.add(item.nodeid)


@pytest.hookimpl(wrapper=True)
def runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _current.append(item.nodeid)
    try:
        return (yield)
    finally:
        _current.pop()


def unmarked_process_starters() -> list[str]:
    return sorted(_started - _marked)
