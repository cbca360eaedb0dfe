"""Metrics (JSON lines) and TensorBoard scalars of a run, under <dump_path>, also when it is on S3.

Files are written locally (in dump_path itself when it is local, else in a staging folder) and copied to
the remote dump_path by `sync()`, which the trainer calls with every checkpoint and at the end, so that
`tensorboard --logdir <dump_path>/tb` shows the run wherever it lives.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from trainer import storage


class RunLog:
    def __init__(self, dump_path: str, metrics_name: str = "metrics.jsonl"):
        self.dump_path = dump_path
        self.remote = not storage.is_local(dump_path)
        self.local_dir = tempfile.mkdtemp(prefix="unmix-runlog-") if self.remote else \
            storage.filesystem(dump_path)[1]
        os.makedirs(self.local_dir, exist_ok=True)
        self.metrics_name = metrics_name
        self.metrics_file = os.path.join(self.local_dir, metrics_name)
        remote_metrics = storage.join(dump_path, metrics_name)
        if self.remote and storage.exists(remote_metrics):  # resuming: keep appending to the old lines
            with open(self.metrics_file, "wb") as handle:
                handle.write(storage.read_bytes(remote_metrics))
        self.writer = SummaryWriter(log_dir=os.path.join(self.local_dir, "tb"))

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
        if not self.remote:
            return
        with open(self.metrics_file, "rb") as handle:
            storage.atomic_write_bytes(storage.join(self.dump_path, self.metrics_name), handle.read())
        tb_dir = os.path.join(self.local_dir, "tb")
        for name in sorted(os.listdir(tb_dir)):
            with open(os.path.join(tb_dir, name), "rb") as handle:
                storage.atomic_write_bytes(storage.join(self.dump_path, "tb", name), handle.read())

    def close(self) -> None:
        self.sync()
        self.writer.close()
