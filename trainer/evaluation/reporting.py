"""What every evaluation leaves under --dump_path: metrics.json, params.json and TensorBoard scalars."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from trainer import storage

log = logging.getLogger(__name__)


def summary(history: list[dict[str, float]]) -> dict[str, Any]:
    """Top-1 / top-5 of the last and of the best (highest top-1) epoch of `history`."""
    last = history[-1]
    best = max(history, key=lambda row: row["top1"])
    return {"top1": last["top1"], "top5": last["top5"], "last": last, "best": best,
            "best_epoch": best["epoch"]}


def write_metrics(dump_path: str, command: str, args: dict[str, Any], pretrained: dict[str, Any] | None,
                  results: dict[str, Any]) -> str:
    """Write `<dump_path>/metrics.json` (and params.json, the arguments alone); returns the metrics URL."""
    url = storage.join(dump_path, "metrics.json")
    payload = {"command": command, **results, "pretrained": pretrained, "args": args}
    storage.write_text(url, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    storage.write_text(storage.join(dump_path, "params.json"),
                       json.dumps(args, indent=2, sort_keys=True, default=str) + "\n")
    log.info("metrics written to %s", url)
    return url


class TensorBoard:
    """SummaryWriter on local disk; when dump_path is remote, `sync` copies the event files to `<dump>/tb`."""

    def __init__(self, dump_path: str, enabled: bool = True):
        self.enabled = enabled
        self.remote = None if storage.is_local(dump_path) else storage.join(dump_path, "tb")
        if not enabled:
            self.writer = None
            return
        if self.remote is None:
            local = storage.filesystem(storage.join(dump_path, "tb"))[1]
        else:
            local = tempfile.mkdtemp(prefix="unmix-tb-")
        self.local = local
        self.writer = SummaryWriter(log_dir=local)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def sync(self) -> None:
        if self.writer is None or self.remote is None:
            return
        fs, path = storage.filesystem(self.remote)
        storage.with_retries(lambda: fs.put(self.local.rstrip("/") + "/", path, recursive=True),
                             f"copying TensorBoard files to {self.remote}")

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.sync()
        if self.remote is not None:
            shutil.rmtree(self.local, ignore_errors=True)
        self.writer = None
