"""The one metrics writer: typed records in `<dump_path>/metrics.jsonl`, TensorBoard scalars in `tb/`, the
final document in `metrics.json`; local folders and object storage alike.

Every record has a `kind` (KINDS) and a `step` (the run's one x axis: optimizer steps for pretraining and
DETR, epochs for the evaluations), so readers select what they want instead of guessing from keys.
Files are written locally (in dump_path itself when it is local, else in a staging folder) and copied to
a remote dump_path by `sync()`. A run resumed at step S drops the records after S (written by the killed
process after its last checkpoint) and purges TensorBoard events after S, so no step appears twice.
Only the main rank writes: on the others every method is a no-op (`enabled=False`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

from trainer import storage
from trainer.run import tracking

log = logging.getLogger(__name__)

METRICS_LOG = "metrics.jsonl"
METRICS_DOCUMENT = "metrics.json"
KINDS = ("train_step", "epoch", "knn", "eval_epoch", "final", "plan")
NOT_SCALARS = frozenset({"kind", "step", "epoch", "iteration"})


class MetricsLog:
    def __init__(self, dump_path: str, enabled: bool = True, resume_step: int | None = None) -> None:
        self.dump_path = dump_path
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to import

        self.remote = not storage.is_local(dump_path)
        self.local_dir = tempfile.mkdtemp(prefix="unmix-metrics-") if self.remote else \
            storage.filesystem(dump_path)[1]
        os.makedirs(self.local_dir, exist_ok=True)
        self.records_file = os.path.join(self.local_dir, METRICS_LOG)
        self._restore(resume_step)
        self.writer = SummaryWriter(log_dir=os.path.join(self.local_dir, "tb"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def _restore(self, resume_step: int | None) -> None:
        """Bring this run's earlier records into the local file: all of them up to `resume_step`, or none
        for a fresh start (a dump path reused after deleting its checkpoint starts a new record)."""
        if resume_step is None:
            text = ""
        elif self.remote:
            remote = storage.join(self.dump_path, METRICS_LOG)
            text = storage.read_text(remote) if storage.exists(remote) else ""
        elif os.path.exists(self.records_file):
            with open(self.records_file, encoding="utf-8") as handle:
                text = handle.read()
        else:
            text = ""
        kept = [line for line in text.splitlines(keepends=True) if _step_of(line) <= (resume_step or 0)]
        storage.atomic_write_bytes(self.records_file, "".join(kept).encode("utf-8"))

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Append one `kind` record at `step`; its numbers also become TensorBoard scalars `<kind>/<key>`."""
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}; one of {KINDS}")
        if not self.enabled:
            return
        with open(self.records_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "step": step, **values}, sort_keys=True) + "\n")
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in NOT_SCALARS:
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        tracker = tracking.active(self.dump_path)
        if tracker is not None:
            tracker.metrics(kind, step, values, NOT_SCALARS)

    def sync(self) -> None:
        """Flush TensorBoard and, for a remote dump_path, upload the records and event files."""
        if not self.enabled:
            return
        self.writer.flush()
        self._upload()
        tracker = tracking.active(self.dump_path)
        if tracker is not None:
            tracker.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.writer.close()
        self._upload()
        if self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)
        self.enabled = False

    def _upload(self) -> None:
        if not self.remote:
            return
        with open(self.records_file, "rb") as handle:
            storage.atomic_write_bytes(storage.join(self.dump_path, METRICS_LOG), handle.read())
        tb_dir = os.path.join(self.local_dir, "tb")
        for name in sorted(os.listdir(tb_dir)):
            with open(os.path.join(tb_dir, name), "rb") as handle:
                storage.atomic_write_bytes(storage.join(self.dump_path, "tb", name), handle.read())


def _step_of(line: str) -> int:
    """The `step` of a record; unreadable lines (torn by a kill) sort last, so a resume drops them."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def _kind_of(record: dict[str, Any]) -> str:
    """Records written before kinds existed: kNN lines carry knn_top1, every other line was a train step."""
    return record.get("kind") or ("knn" if "knn_top1" in record else "train_step")


def read_records(dump_path: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of `<dump_path>/metrics.jsonl` (of one `kind` if given), oldest first; none if absent."""
    url = storage.join(dump_path, METRICS_LOG)
    if not storage.exists(url):
        return []
    records = []
    for line in storage.read_text(url).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if isinstance(record, dict) and (kind is None or _kind_of(record) == kind):
            records.append({**record, "kind": _kind_of(record)})
    return records


def write_document(dump_path: str, document: dict[str, Any]) -> str:
    """Write the command's final result as `<dump_path>/metrics.json`; its URL."""
    url = storage.join(dump_path, METRICS_DOCUMENT)
    storage.write_verified(url, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    log.info("metrics written to %s", url)
    tracker = tracking.active(dump_path)
    if tracker is not None:
        tracker.document(document, METRICS_DOCUMENT)
    return url


def read_document(dump_path: str) -> dict[str, Any]:
    return json.loads(storage.read_verified(storage.join(dump_path, METRICS_DOCUMENT)))
