"""TensorBoard scalars under `<dump_path>/tb`, for local folders and object storage alike.

SummaryWriter writes local files only: for a remote dump path it writes to a temporary folder whose files
are uploaded on every `flush`, so the bucket always holds the events up to the last epoch.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from torch.utils.tensorboard import SummaryWriter

from trainer import storage


class ScalarLog:
    def __init__(self, dump_path: str, purge_step: int | None = None) -> None:
        """`purge_step`: on resume, drop events this run will write again (logged after the checkpoint)."""
        self.remote = None if storage.is_local(dump_path) else storage.join(dump_path, "tb")
        if self.remote is None:
            self.folder = storage.filesystem(storage.join(dump_path, "tb"))[1]
        else:
            self.folder = tempfile.mkdtemp(prefix="detr-tb-")
        self.writer = SummaryWriter(self.folder, purge_step=purge_step)

    def add(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def _upload(self) -> None:
        if self.remote is None:
            return
        for name in os.listdir(self.folder):
            with open(os.path.join(self.folder, name), "rb") as handle:
                storage.atomic_write_bytes(storage.join(self.remote, name), handle.read())

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.remote is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
