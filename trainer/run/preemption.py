"""SIGTERM (a Kubernetes eviction or preemption) as a flag the training loop checks at its own pace."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from trainer.errors import Preempted


class PreemptionFlag:
    """Set by SIGTERM (Kubernetes eviction). The loop checkpoints and exits at its next check; while it
    waits for data (a slow or stalled read) the signal ends the wait at once."""

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def close(self) -> None:
        """Give SIGTERM back to the handler it had before (the process may go on, e.g. in a pipeline step)."""
        signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if self._waiting:
            raise Preempted("SIGTERM while waiting for data")

    @contextlib.contextmanager
    def waiting_for_data(self) -> Iterator[None]:
        self._waiting = True
        try:
            if self.requested:
                raise Preempted("SIGTERM while waiting for data")
            yield
        finally:
            self._waiting = False
