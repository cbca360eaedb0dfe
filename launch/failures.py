"""A job's permanent failure, remembered for the step's retries.

kfp retries a launching step (a launcher pod lost with its node must adopt its job again), and its local runner
honours the retry policy too. A job that failed permanently (exit 1-127: bad flags or data, a deadline; see
launch.errors) can only fail again, so the launching step (components/jobs.py launch_step) leaves a marker in
the job's --dump_path, `<dump_path>/.launch-failed.json`, and the next attempt of the SAME job (same name,
which follows from the command and the dump path, i.e. the run, and the same JobSpec, flags included) fails at
once with the same line and exit code. A run with other flags or another run id never matches: its marker is
removed and it starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time

from launch.errors import JobFailed, is_retryable
from launch.spec import JobSpec, flag_value
from trainer import storage

log = logging.getLogger(__name__)

MARKER = ".launch-failed.json"


def marker_url(spec: JobSpec) -> str | None:
    """Where `spec`'s marker lives: its --dump_path (None for a job without one)."""
    dump = flag_value(list(spec.trainer_args), "--dump_path")
    return storage.join(dump, MARKER) if dump else None


def spec_digest(spec: JobSpec) -> str:
    """Changes with any field of the JobSpec: the flags, the sizes, the image, the job options."""
    fields = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(fields.encode("utf-8")).hexdigest()


def check_earlier_failure(spec: JobSpec) -> None:
    """Raise the JobFailed an earlier attempt of this very job recorded; drop a marker of another JobSpec."""
    url = marker_url(spec)
    if url is None or not storage.exists(url):
        return
    try:
        record = json.loads(storage.read_text(url))
        same = record["job"] == spec.name and record["spec_sha256"] == spec_digest(spec)
        code, reason, when = int(record["exit_code"]), str(record["reason"]), str(record["time"])
    except (ValueError, KeyError, TypeError):  # a torn or hand-edited marker: no evidence of a failure
        same = False
    if not same:
        fs, path = storage.filesystem(url)
        storage.with_retries(lambda: fs.rm(path), f"removing the stale {url}")
        return
    raise JobFailed(f"{reason} (an earlier attempt of this step failed permanently at {when}, recorded in "
                    f"{url}; a retry cannot cure it: fix the cause and start a new run)", exit_code=code)


def record_failure(spec: JobSpec, failure: JobFailed) -> None:
    """Leave the marker when `failure` is permanent; a marker that cannot be written is logged, not raised (the
    job's own failure is what the step reports)."""
    url = marker_url(spec)
    if url is None or failure.exit_code <= 0 or is_retryable(failure.exit_code):
        return
    record = {"job": spec.name, "spec_sha256": spec_digest(spec), "exit_code": failure.exit_code,
              "reason": str(failure), "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        storage.write_text(url, json.dumps(record, indent=1) + "\n")
    except Exception as error:  # noqa: BLE001 (the job's failure must not be masked by the marker's)
        log.warning("could not record the permanent failure in %s: %s", url, storage.describe(error))
