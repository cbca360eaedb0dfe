"""One retry budget per storage operation (trainer/storage.py): s3fs and botocore make one attempt per request,
so a 503 / SlowDown storm ends in StorageUnavailable (exit 138) within `retry_bound_s`, through a real proxy
(tests/trainer/data/s3_proxy.py) in front of moto on loopback; local faults are never retried."""

from __future__ import annotations

import errno
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
from forked import FORK, forked_child  # noqa: E402
from s3_proxy import StorageProxy  # noqa: E402

from trainer import env, storage  # noqa: E402
from trainer.data.sources import open_source  # noqa: E402
from trainer.data.staging import stage_dataset  # noqa: E402

ROUND_TRIP_S = 1.0  # generous time of one failing attempt on loopback (a 503 takes milliseconds)


@pytest.mark.parametrize(("attempts", "first", "most", "request_s", "bound"), [
    (8, 1.0, 30.0, 0.0, 91.0),  # the defaults: 1+2+4+8+16+30+30
    (8, 1.0, 30.0, 25.0, 291.0),  # every request timing out (CONNECT_TIMEOUT_S + READ_TIMEOUT_S)
    (2, 0.1, 30.0, 0.0, 0.1),
    (3, 1.0, 1.5, 2.0, 8.5),  # capped: 1 + 1.5, plus 3 requests
    (1, 5.0, 30.0, 0.5, 0.5),  # no retry: one request
])
def test_the_bound_formula(attempts: int, first: float, most: float, request_s: float, bound: float) -> None:
    assert storage.retry_bound_s(attempts, first, most, request_s) == pytest.approx(bound)


def test_the_defaults_end_a_storm_within_two_minutes() -> None:
    defaults = env.parse({})
    assert storage.retry_bound_s(defaults.storage_retries, defaults.storage_retry_delay_s, storage.RETRY_MAX_DELAY_S,
                                 ROUND_TRIP_S) <= 120


def test_s3_makes_one_attempt_per_request_with_timeouts(s3_server) -> None:
    fs, _ = storage.filesystem("s3://any/key")
    assert fs.retries == 1
    config = fs.config_kwargs
    assert config["retries"] == {"total_max_attempts": 1, "mode": "standard"}
    assert config["connect_timeout"] == storage.CONNECT_TIMEOUT_S and config["read_timeout"] == storage.READ_TIMEOUT_S


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_local_fault_is_raised_at_once_not_retried(code: int) -> None:
    calls = []

    def action() -> None:
        calls.append(1)
        raise OSError(code, os.strerror(code))

    with pytest.raises(OSError) as raised:
        storage.with_retries(action, "writing /cache/x")
    assert raised.value.errno == code and not isinstance(raised.value, storage.StorageUnavailable) and calls == [1]


@pytest.fixture(autouse=True)
def _no_budget_spent_before() -> None:
    """A budget an earlier test spent counts for its sleeps after it (shared memory, like a run's processes): each
    test starts as a fresh run would."""
    storage._GAVE_UP[0] = storage._GAVE_UP[1] = -math.inf


def always_failing() -> None:
    raise OSError(errno.EIO, "503 SlowDown")


def spend_a_budget(started=None) -> None:
    if started is not None:
        started.set()
    with pytest.raises(storage.StorageUnavailable):
        storage.with_retries(always_failing, "the prefetcher's fetch")


@pytest.mark.slow
def test_a_budget_spent_in_another_process_ends_the_waiting_ones(monkeypatch) -> None:
    """A forked process (a loader worker, or the prefetcher's side) spends its budget: an operation of this
    process already backing off raises at once instead of spending a second budget."""
    monkeypatch.setenv("UNMIX_STORAGE_RETRIES", "4")
    monkeypatch.setenv("UNMIX_STORAGE_RETRY_DELAY", "0.4")  # sleeps 0.4 + 0.8 + 1.6 = 2.8 s
    running = FORK.Event()
    with forked_child(spend_a_budget, running) as other:
        assert running.wait(30)
        started = time.monotonic()
        time.sleep(1.0)
        with pytest.raises(storage.StorageUnavailable, match="another operation of this run spent the retry budget"):
            storage.with_retries(always_failing, "the reader's fetch")
        ended = time.monotonic() - started
        other.join(10)
        assert other.exitcode == 0
    alone = 1.0 + storage.retry_bound_s(4, 0.4, 30.0, ROUND_TRIP_S)  # what a second budget would have taken
    assert ended <= storage.retry_bound_s(4, 0.4, 30.0, ROUND_TRIP_S) + 0.5 < alone


def test_after_the_window_a_new_outage_gets_a_whole_budget(monkeypatch) -> None:
    monkeypatch.setenv("UNMIX_STORAGE_RETRIES", "3")
    monkeypatch.setenv("UNMIX_STORAGE_RETRY_DELAY", "0.05")
    spend_a_budget()
    time.sleep(0.2)  # past the 0.05 + 0.1 s of sleeps
    calls = []

    def fail_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EIO, "503 SlowDown")
        return "ok"

    assert storage.with_retries(fail_twice, "a later read") == "ok" and len(calls) == 3


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setenv("UNMIX_STORAGE_RETRIES", "2")
    monkeypatch.setenv("UNMIX_STORAGE_RETRY_DELAY", "0.1")
    return storage.retry_bound_s(2, 0.1, storage.RETRY_MAX_DELAY_S, ROUND_TRIP_S)


@pytest.fixture(scope="module")
def staged(s3_server, shapes_dir: Path) -> str:
    dest = f"{s3_server.bucket('retries')}/staged"
    stage_dataset(str(shapes_dir), dest, shard_size_mb=0.02, workers=2, progress=lambda message: None)
    return dest


@pytest.fixture
def storm(s3_server, monkeypatch):
    """A proxy that answers every GET with 503 SlowDown once armed (`proxy.slow_down = N`)."""
    proxy = StorageProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("operation", ["read a file", "fetch a shard into the cache", "ranged sample read"])
def test_a_storm_ends_in_one_budget(staged: str, storm: StorageProxy, small_budget: float, tmp_path: Path,
                                    monkeypatch, operation: str) -> None:
    if operation == "ranged sample read":
        monkeypatch.setenv("UNMIX_SHARD_CACHE", "off")
    source = open_source(staged, cache_dir=str(tmp_path / "cache") if operation != "ranged sample read" else None)
    storm.slow_down = 10**6
    started = time.monotonic()
    with pytest.raises(storage.StorageUnavailable, match="failed 2 times over") as raised:
        if operation == "read a file":
            storage.read_bytes(f"{staged}/manifest.json")
        else:
            source.load(0)
    elapsed = time.monotonic() - started
    assert elapsed <= small_budget, f"{elapsed:.2f}s > bound {small_budget:.2f}s"
    assert storm.slowed_down == 2  # one GET per attempt: neither s3fs nor botocore retried inside ours
    assert "\n" not in str(raised.value) and "reduce your request rate" in str(raised.value)


@pytest.mark.slow
def test_a_storm_during_pretraining_exits_138_within_the_bound(staged: str, storm: StorageProxy,
                                                                tmp_path: Path) -> None:
    """The CLI through the proxy: GETs pass until the run is reading, then every GET is 503. The time from the
    first 503 to exit is one budget (prefetch failures are handed to the readers), plus the process's exit."""
    storm.pass_first, storm.slow_down = 6, 10**6  # manifest, index, the first shards; then the storm
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNMIX_STORAGE_RETRIES": "2", "UNMIX_STORAGE_RETRY_DELAY": "0.5",
           "UNMIX_SHARD_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "trainer", "pretrain", "--data_path", staged, "--dump_path",
                           str(tmp_path / "dump"), "--preset", "demo_cpu", "--nmb_crops", "2", "--size_crops",
                           "32", "--min_scale_crops", "0.3", "--max_scale_crops", "1", "--batch_size", "4",
                           "--epochs", "3", "--nmb_prototypes", "20", "--workers", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    ended = time.monotonic()
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 138, done.stderr[-3000:]
    # The operation that ends the run spent the budget itself, or failed once after a concurrent one (a shard's
    # other part, the prefetch) had spent it: which one wins the race depends on the machine's load.
    spent = re.search(r"failed (2 times|1 time) over .*", errors[0]) if len(errors) == 1 else None
    assert spent and (spent[1] == "2 times" or "another operation of this run spent the retry" in spent[0]), errors
    assert "Traceback" not in done.stderr
    assert storm.first_slow_down_at is not None
    bound = storage.retry_bound_s(2, 0.5, storage.RETRY_MAX_DELAY_S, ROUND_TRIP_S)
    exit_allowance_s = 15.0  # stopping the loader workers and the process on a shared 2-core machine
    assert ended - storm.first_slow_down_at <= bound + exit_allowance_s
