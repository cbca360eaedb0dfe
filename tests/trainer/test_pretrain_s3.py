"""Pretraining with the dataset and every output on S3 (moto over real HTTP), through an outage of the
store, and without a credential in any file or log line."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from trainer import storage
from trainer.run.metrics import read_records

BUCKET = "pretrain-s3"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzEXAMPLEKEY"  # distinctive, so that any leak is found by a search
TINY = ["--preset", "demo_cpu", "--nmb_crops", "2", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.3",
        "0.1", "--max_scale_crops", "1", "0.3", "--batch_size", "8", "--epochs", "2",
        "--nmb_prototypes", "20", "--freeze_prototypes_niters", "3", "--log_freq", "2",
        "--checkpoint_every_steps", "2"]


class FlakyProxy:
    """A TCP forwarder in front of the S3 server that can fail like a store going down.

    `go_down_on(prefix, n, down_for)`: the n-th request starting with `prefix` has its connection cut
    mid-upload, and the port refuses connections for `down_for` seconds (None: until `start()`).
    The server behind keeps its state, so what survived the outage can be checked afterwards.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.trigger: bytes | None = None
        self.trigger_at = 0
        self.down_for: float | None = None
        self.triggered = threading.Event()
        self._seen = 0
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        if listener is not None:
            listener.close()
        for connection in connections:
            _close(connection)

    def go_down_on(self, request_prefix: bytes, occurrence: int, down_for: float | None) -> None:
        self.trigger, self.trigger_at, self.down_for, self._seen = request_prefix, occurrence, down_for, 0
        self.triggered.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                if not select.select([listener], [], [], 0.05)[0]:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by stop()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._is_trigger(data):
                    self._go_down()
                    return
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)

    def _is_trigger(self, data: bytes) -> bool:
        if self.trigger is None or not data.startswith(self.trigger):
            return False
        self._seen += 1
        return self._seen == self.trigger_at

    def _go_down(self) -> None:
        self.trigger = None
        self.triggered.set()
        self.stop()
        if self.down_for is not None:
            threading.Timer(self.down_for, self.start).start()


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


@pytest.fixture(scope="module")
def s3_data(s3_server, shapes_dir) -> str:
    bucket = s3_server.bucket(BUCKET)
    fs, _ = storage.filesystem(bucket)
    fs.put(str(shapes_dir / "train"), f"{BUCKET}/shapes/train", recursive=True)
    return f"{bucket}/shapes/train"


@pytest.fixture(scope="module")
def proxy(s3_server):
    flaky = FlakyProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    flaky.start()
    yield flaky
    flaky.stop()


def pretrain(data_url: str, dump_url: str, endpoint: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a subprocess whose S3 settings come only from the AWS environment variables."""
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "AWS_ENDPOINT_URL": endpoint, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_MAX_ATTEMPTS": "1", "UNMIX_STORAGE_RETRY_DELAY": "0.5", **env}  # our backoff, not botocore's
    command = [sys.executable, "-m", "trainer", "pretrain", "--data_path", data_url, "--dump_path", dump_url,
               *TINY, *extra]
    return subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def s3_run(s3_server, s3_data, proxy):
    """4 steps through the proxy, which cuts the second checkpoint upload and is down for 3 s; then the
    same command resumes to step 6 straight against the server."""
    dump = f"s3://{BUCKET}/run"
    # The request line of the checkpoint's own PUT (its .sha256 sidecar is another object).
    proxy.go_down_on(f"PUT /{BUCKET}/run/checkpoint.pth.tar ".encode(), occurrence=2, down_for=3.0)
    first = pretrain(s3_data, dump, proxy.endpoint, "--max_steps", "4", "--workers", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert proxy.triggered.is_set()
    second = pretrain(s3_data, dump, s3_server.endpoint, "--max_steps", "6", "--workers", "0")
    assert second.returncode == 0, second.stderr[-3000:]
    return dump, first, second


def test_every_output_lands_on_s3_and_the_run_resumes_from_there(s3_run, tmp_path):
    dump, _, second = s3_run
    assert f"resumed from {dump}/checkpoint.pth.tar at step 4 " in second.stderr
    fs, _ = storage.filesystem(dump)
    names = {path.removeprefix(f"{BUCKET}/run/") for path in fs.find(f"{BUCKET}/run")}
    assert {"checkpoint.pth.tar", "backbone.pth", "params.json", "metrics.jsonl", "checkpoints/ckp-0.pth"} <= names
    assert storage.load_torch(f"{dump}/checkpoint.pth.tar")["step"] == 6
    steps = [record["step"] for record in read_records(dump, "train_step")]
    assert all(record["gets_per_s"] >= 0 and "read_mb_per_s" in record for record in read_records(dump, "train_step"))
    assert steps == [2, 4, 6]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fs.get(f"{BUCKET}/run/tb", str(tmp_path / "tb"), recursive=True)
    losses = []
    for event_file in sorted((tmp_path / "tb").iterdir()):
        events = EventAccumulator(str(event_file))
        events.Reload()
        losses += [scalar.step for scalar in events.Scalars("train_step/loss")]
    assert sorted(losses) == [2, 4, 6]


def test_a_save_cut_by_an_outage_is_retried_and_lands_whole(s3_run):
    dump, first, _ = s3_run
    assert f"writing {dump}/checkpoint.pth.tar failed (" in first.stderr
    assert "retry 1/" in first.stderr
    assert "Traceback" not in first.stderr


def test_credentials_appear_in_no_file_and_no_log_line(s3_run):
    _, first, second = s3_run
    fs, _ = storage.filesystem(f"s3://{BUCKET}")
    leaks = [path for path in fs.find(BUCKET) if SECRET.encode() in fs.cat_file(path)]
    assert leaks == []
    for run in (first, second):
        assert SECRET not in run.stdout and SECRET not in run.stderr
    params = json.loads(storage.read_text(f"s3://{BUCKET}/run/params.json"))
    assert not [key for key in params if "aws" in key.lower() or "secret" in key.lower()]


def test_a_store_that_stays_down_fails_the_run_cleanly_and_keeps_the_last_checkpoint(s3_server, s3_data, proxy):
    dump = f"s3://{BUCKET}/down"
    proxy.go_down_on(f"PUT /{BUCKET}/down/checkpoint.pth.tar ".encode(), occurrence=2, down_for=None)
    started = time.monotonic()
    try:
        failed = pretrain(s3_data, dump, proxy.endpoint, "--max_steps", "6", "--workers", "0",
                          UNMIX_STORAGE_RETRIES="3", UNMIX_STORAGE_RETRY_DELAY="0.2")
    finally:
        if proxy.triggered.is_set():  # back up for whatever runs next
            proxy.start()
    assert failed.returncode == 138, failed.stderr[-3000:]
    assert time.monotonic() - started < 120
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: writing {dump}/checkpoint.pth.tar failed 3 times over"), failed.stderr[-3000:]
    assert last.endswith("exiting 138 so that the job restarts and resumes from the last checkpoint")
    assert "Traceback" not in failed.stderr
    assert storage.load_torch(f"{dump}/checkpoint.pth.tar")["step"] == 2  # the last good one, whole
