"""Optional experiment tracking: with MLFLOW_TRACKING_URI set, each run is mirrored to one MLflow run.

The main rank starts (or, on a restart, continues) one MLflow run per dump path: its id is kept in
`<dump_path>/mlflow_run_id`, so a resumed run keeps logging into the same MLflow run. Params are the
params.json contents (stringified, at most 500 characters); every MetricsLog record's numbers become
metrics `<kind>/<name>` at the record's step; metrics.json's numbers become `result/<path>`, its `status`
a tag, the file itself an artifact. Without the variable nothing here imports mlflow or does anything.

A tracking failure never ends a run: it is logged once as a warning and tracking stops for that run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

from trainer import storage
from trainer.errors import UserError

log = logging.getLogger(__name__)

ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "unmix-swav"
RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_VALUE = 500
BATCH = 500  # metrics per log_batch call (MLflow takes at most 1000)
_trackers: dict[str, Tracker] = {}


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def check_available() -> None:
    """With MLFLOW_TRACKING_URI set, fail with one line if mlflow is not installed."""
    if enabled() and importlib.util.find_spec("mlflow") is None:
        raise UserError(f"{ENV} is set but mlflow is not installed: pip install unmix-swav[mlflow] "
                        f"(or unset {ENV})")


class Tracker:
    """One MLflow run mirroring the run in `dump_path`; every method is a no-op once tracking failed."""

    def __init__(self, command: str, dump_path: str) -> None:
        self.command, self.dump_path = command, dump_path
        self.run_id: str | None = None
        self.pending: list[Any] = []
        self.failed = False
        self._guard(self._start)

    def _guard(self, action: Any, *args: Any) -> None:
        if self.failed:
            return
        try:
            action(*args)
        except Exception as error:  # tracking must never end the run
            self.failed = True
            log.warning("MLflow tracking of %s stopped (%s: %s); the run goes on without it", self.dump_path,
                        type(error).__name__, (str(error).splitlines() or [""])[0][:300])

    def _start(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        id_url = storage.join(self.dump_path, RUN_ID_FILE)
        stored = storage.read_text(id_url).strip() if storage.exists(id_url) else ""
        if stored and self._exists(stored):
            self.run_id = stored
            self.client.update_run(stored, status="RUNNING")
            log.info("MLflow: continuing run %s", stored)
            return
        run = self.client.create_run(self._experiment_id(), run_name=f"{self.command} {self.dump_path}",
                                     tags={"unmix.command": self.command, "unmix.dump_path": self.dump_path})
        self.run_id = run.info.run_id
        storage.write_text(id_url, self.run_id + "\n")
        log.info("MLflow: run %s at %s", self.run_id, os.environ.get(ENV))

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:  # another tracking server, or the run was deleted: start a new one
            return False
        return True

    def _experiment_id(self) -> str:
        name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # created meanwhile by another run
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def params(self, params: Mapping[str, Any]) -> None:
        self._guard(self._params, params)

    def _params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params  # params are immutable: log only new keys
        fresh = [Param(str(key), str(value)[:MAX_PARAM_VALUE]) for key, value in sorted(params.items())
                 if str(key) not in logged]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])

    def metrics(self, prefix: str, step: int, values: Mapping[str, Any], skip: frozenset[str] = frozenset()
                ) -> None:
        """Queue the numbers of `values` as metrics `<prefix>/<key>`; sent at flush() or when many wait."""
        self._guard(self._queue, prefix, step, values, skip)

    def _queue(self, prefix: str, step: int, values: Mapping[str, Any], skip: frozenset[str]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(f"{prefix}/{key}", float(value), now, int(step))
                         for key, value in values.items() if _is_number(value) and key not in skip]
        if len(self.pending) >= BATCH:
            self._flush()

    def flush(self) -> None:
        self._guard(self._flush)

    def _flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def document(self, document: Mapping[str, Any], name: str) -> None:
        """metrics.json: its numbers as `result/...` metrics, its status as a tag, the file as an artifact."""
        if self.failed:
            return
        numbers = dict(_flatten({key: value for key, value in document.items() if key != "args"}))
        self.metrics("result", 0, numbers)
        self.flush()
        self._guard(self._document, document, name)

    def _document(self, document: Mapping[str, Any], name: str) -> None:
        if "status" in document:
            self.client.set_tag(self.run_id, "status", str(document["status"]))
        self.artifact(name, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")

    def artifact(self, name: str, text: str) -> None:
        """Log `text` as the artifact `name` (written to a local temporary file first: dumps may be remote)."""
        with tempfile.TemporaryDirectory(prefix="unmix-mlflow-") as folder:
            path = os.path.join(folder, name)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            self.client.log_artifact(self.run_id, path)

    def end(self, ok: bool) -> None:
        self.flush()
        self._guard(lambda: self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED"))


def start(command: str, dump_path: str) -> Tracker | None:
    """The tracker of `dump_path` (started on first use), or None when tracking is off."""
    if not enabled():
        return None
    tracker = _trackers.get(dump_path)
    if tracker is None or tracker.failed:
        tracker = _trackers[dump_path] = Tracker(command, dump_path)
    return tracker


def active(dump_path: str) -> Tracker | None:
    """The tracker a RunSession started for `dump_path`, if any."""
    return _trackers.get(dump_path) if enabled() else None


def end(dump_path: str, ok: bool) -> None:
    tracker = _trackers.pop(dump_path, None)
    if tracker is not None:
        tracker.end(ok)


def log_report(run_root: str, files: Mapping[str, str]) -> None:
    """The report step: its files (name -> text) as artifacts of the MLflow run of `<run_root>/report`."""
    if not enabled():
        return
    check_available()
    dump_path = storage.join(run_root, "report")
    tracker = start("report", dump_path)
    if tracker is None:
        return
    for name, text in files.items():
        tracker._guard(tracker.artifact, name, text)
    end(dump_path, ok=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}/")
        elif _is_number(value):
            yield f"{prefix}{key}", value
