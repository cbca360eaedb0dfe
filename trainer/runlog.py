"""Metrics (JSON lines) and TensorBoard scalars of a run, under <dump_path>, also when it is on S3.

Files are written locally (in dump_path itself when it is local, else in a staging folder) and copied to
the remote dump_path by `sync()`, which the trainer calls with every checkpoint and at the end, so that
`tensorboard --logdir <dump_path>/tb` shows the run wherever it lives.

A run restarted from a checkpoint at step S passes `start_step=S`: metric lines after S (logged by the
killed process after its last checkpoint, and about to be logged again) are dropped, and TensorBoard is
told to purge its events after S, so no step appears twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from trainer import storage


class RunLog:
    def __init__(self, dump_path: str, metrics_name: str = "metrics.jsonl", start_step: int | None = None):
        self.dump_path = dump_path
        self.remote = not storage.is_local(dump_path)
        self.local_dir = tempfile.mkdtemp(prefix="unmix-runlog-") if self.remote else \
            storage.filesystem(dump_path)[1]
        os.makedirs(self.local_dir, exist_ok=True)
        self.metrics_name = metrics_name
        self.metrics_file = os.path.join(self.local_dir, metrics_name)
        self._restore_metrics(start_step)
        self.writer = SummaryWriter(log_dir=os.path.join(self.local_dir, "tb"),
                                    purge_step=None if start_step is None else start_step + 1)

    def _restore_metrics(self, start_step: int | None) -> None:
        """Bring the earlier lines of this run into the local file, without those after `start_step`."""
        remote_metrics = storage.join(self.dump_path, self.metrics_name)
        if self.remote:
            text = storage.read_text(remote_metrics) if storage.exists(remote_metrics) else ""
        elif os.path.exists(self.metrics_file):
            with open(self.metrics_file, encoding="utf-8") as handle:
                text = handle.read()
        else:
            return
        lines = text.splitlines(keepends=True)
        if start_step is not None:
            lines = [line for line in lines if _step_of(line) <= start_step]
        storage.atomic_write_bytes(self.metrics_file, "".join(lines).encode("utf-8"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Append one JSON line and write every numeric value as a TensorBoard scalar."""
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(values, sort_keys=True) + "\n")
        for key, value in values.items():
            if isinstance(value, int | float) and key not in ("epoch", "iteration", "step"):
                self.writer.add_scalar(f"train/{key}", value, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def sync(self) -> None:
        """Flush TensorBoard and, for a remote dump_path, upload metrics and event files."""
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)

    def _upload(self) -> None:
        if not self.remote:
            return
        with open(self.metrics_file, "rb") as handle:
            storage.atomic_write_bytes(storage.join(self.dump_path, self.metrics_name), handle.read())
        tb_dir = os.path.join(self.local_dir, "tb")
        for name in sorted(os.listdir(tb_dir)):
            with open(os.path.join(tb_dir, name), "rb") as handle:
                storage.atomic_write_bytes(storage.join(self.dump_path, "tb", name), handle.read())


def _step_of(line: str) -> int:
    """The `step` of a metrics line; lines without one (or unreadable, e.g. torn by a kill) sort last."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
