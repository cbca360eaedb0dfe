"""A command's hold on its --dump_path: the run lock, then the resume check, params.json and the metrics.

    with RunSession("pretrain", cfg.dump_path, env) as session:
        saved = session.resume(CHECKPOINT, identity)      # None, or the checkpoint of this very run
        session.write_params(params)                      # only after the resume check passed
        metrics = session.metrics(resume_step)

Only the main rank takes the lock (the ranks of one job share it); every rank learns whether it was taken,
so a refused job ends on all ranks at once instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from trainer import storage
from trainer.distributed import DistEnv
from trainer.errors import RetryableError, UserError
from trainer.run import tracking
from trainer.run.boundary import one_line
from trainer.run.lock import RunLock
from trainer.run.metrics import MetricsLog
from trainer.run.resume import resume_point, save_checkpoint

log = logging.getLogger(__name__)
PARAMS = "params.json"


class RunSession:
    def __init__(self, command: str, dump_path: str, env: DistEnv) -> None:
        self.command, self.dump_path, self.env = command, dump_path, env
        self.lock: RunLock | None = None
        self.identity: dict[str, Any] | None = None
        self.resumed_from: str | None = None  # the checkpoint `resume` returned: the latest or the previous one
        self.params: dict[str, Any] = {}

    def __enter__(self) -> RunSession:
        refusal = None
        if self.env.is_main:
            try:
                tracking.check_available()
                storage.makedirs(self.dump_path)
                self.lock = RunLock(self.dump_path, self.command)
                self.lock.acquire()
            except Exception as error:  # told to the other ranks before it ends this one
                if isinstance(error, OSError) and not isinstance(error, RetryableError) and not error.filename:
                    error.filename = self.dump_path  # s3fs leaves it out: the one-line message names the path
                refusal = error
        message = _from_main(None if refusal is None else one_line(refusal), self.env)
        if refusal is not None:
            raise refusal
        if message is not None:
            raise UserError(f"rank 0 could not start the run: {message}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if self.lock is None:
            return
        tracking.end(self.dump_path, ok=exc_type is None)
        lock, self.lock = self.lock, None
        if exc_type is None:
            lock.release()
            return
        try:  # the run is failing already: its own error is the one to report, not a failed release
            lock.release()
        except Exception as error:
            log.warning("could not release the run lock of %s (%s); it expires after its lease", self.dump_path,
                        one_line(error))

    def url(self, name: str) -> str:
        """`name` under the dump path; a URL or an absolute path (detr's --resume) stays as it is."""
        return name if "://" in name or name.startswith("/") else storage.join(self.dump_path, name)

    def resume(self, name: str, identity: Mapping[str, Any], map_location: str | torch.device = "cpu",
               legacy_identity: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
               ) -> dict[str, Any] | None:
        """The checkpoint `name` of this run (every rank reads it), None to start fresh; refuses another run's.
        A damaged one gives way to the previous checkpoint (`resumed_from` says which was read).

        `identity` is also what `save` records in every checkpoint of this run."""
        self.identity = dict(identity)
        found = resume_point(self.url(name), identity, map_location, legacy_identity)
        if found is None:
            return None
        self.resumed_from, state = found
        return state

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write checkpoint `name` with this run's identity (call `resume` first)."""
        assert self.identity is not None, "resume() records the identity that save() writes"
        save_checkpoint(self.url(name), state, self.identity)

    def write_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's flags in params.json (main rank); call it after `resume` accepted the run."""
        self.params = dict(params)
        if self.env.is_main:
            storage.write_text(self.url(PARAMS), json.dumps(dict(params), indent=2, sort_keys=True, default=str)
                               + "\n")
            tracker = tracking.start(self.command, self.dump_path)
            if tracker is not None:
                tracker.params(self.params)

    def metrics(self, resume_step: int | None = None) -> MetricsLog:
        """The run's metrics writer (a no-op on ranks other than the main one)."""
        return MetricsLog(self.dump_path, enabled=self.env.is_main, resume_step=resume_step)

    def check_lock(self) -> None:
        """Raise RetryableError if another run took the lock over (our heartbeat stalled past the lease)."""
        if self.lock is not None:
            self.lock.check()


def _from_main(value: str | None, env: DistEnv) -> str | None:
    """Rank 0's `value`, on every rank."""
    if not env.is_distributed or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
