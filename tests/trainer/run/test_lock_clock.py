"""trainer.run.lock judged by the reader's clock: skewed heartbeats, leases, and holders gone from this machine.

Holders are real processes (`python -c` holding a RunLock) killed with real signals, on a local path and on
moto's S3 server on loopback. A holder "on a host whose clock is ahead" is a real process whose lock stamps
its heartbeats with its wall clock shifted (its `_now_iso`), the only stand-in here: one machine has one clock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from trainer import storage
from trainer.errors import UserError
from trainer.run import lock as lock_module
from trainer.run.lock import HOLDER_FIELDS, LOCK_NAME, MACHINE_FIELDS, SKEW_TOLERANCE_S, RunLock

ROOT = Path(__file__).resolve().parents[3]
LONG_LEASE_S = 600.0  # a takeover well within it cannot have waited for it
HOLDER = """
import sys, time
from datetime import datetime, timedelta, timezone
from trainer.run import lock
skew = float(sys.argv[3])
lock._now_iso = lambda: (datetime.now(timezone.utc) + timedelta(seconds=skew)).isoformat(timespec="milliseconds")
held = lock.RunLock(sys.argv[1], "pretrain (holder)", lease_s=float(sys.argv[2]))
held.acquire()
print("held", flush=True)
if sys.argv[4] == "exit":
    import os; os._exit(138)  # ends as a store outage does: no release
time.sleep(600)
"""


@pytest.fixture(autouse=True)
def no_run_id(monkeypatch):
    monkeypatch.delenv("UNMIX_RUN_ID", raising=False)


def _iso(seconds_from_now: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)).isoformat(timespec="milliseconds")


def plant(dump: str, **fields) -> None:
    """A lock as another run would have written it: live, on another host, unless `fields` say otherwise."""
    holder = {"host": "elsewhere", "pid": 4242, "job": "", "command": "pretrain", "started_at": _iso(-60),
              "heartbeat_at": _iso(0), "lease_s": LONG_LEASE_S, "token": "theirs", **fields}
    storage.makedirs(dump)
    storage.atomic_write_bytes(storage.join(dump, LOCK_NAME), json.dumps(holder).encode())


def lock_record(dump: str) -> dict | None:
    url = storage.join(dump, LOCK_NAME)
    return json.loads(storage.read_text(url)) if storage.exists(url) else None


def start_holder(dump: str, lease_s: float, skew_s: float = 0.0, then: str = "sleep") -> subprocess.Popen:
    """A real process holding the lock of `dump`; returns once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, dump, str(lease_s), str(skew_s), then], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def stop(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        holder.kill()
    holder.wait(timeout=30)


@pytest.fixture
def local_dump(tmp_path: Path) -> str:
    return str(tmp_path / "run")


@pytest.fixture
def s3_dump(s3_server) -> str:
    return storage.join(s3_server.bucket("run-lock-clock"), uuid.uuid4().hex)


@pytest.fixture(params=["local", "s3"])
def dump(request) -> str:
    return request.getfixturevalue(f"{request.param}_dump")


def timed_acquire(dump: str, lease_s: float = LONG_LEASE_S) -> tuple[RunLock, float]:
    start = time.monotonic()
    taken = RunLock(dump, "pretrain (rerun)", lease_s=lease_s)
    taken.acquire()
    return taken, time.monotonic() - start


# --- leases -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lease_s", [0.0, -1.0, float("nan"), float("inf")])
def test_a_lease_that_is_not_positive_and_finite_is_refused(tmp_path: Path, lease_s: float) -> None:
    with pytest.raises(UserError, match="lease must be > 0"):
        RunLock(str(tmp_path), "pretrain", lease_s=lease_s)


def test_unmix_lock_lease_s_zero_is_refused_before_a_lock_exists(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("UNMIX_LOCK_LEASE_S", "0")
    with pytest.raises(UserError, match="UNMIX_LOCK_LEASE_S='0'"):
        RunLock(str(tmp_path), "pretrain")
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_planted_lock_with_lease_zero_does_not_count_as_a_lease(tmp_path: Path) -> None:
    plant(str(tmp_path), lease_s=0)  # what UNMIX_LOCK_LEASE_S=0 wrote before: a lock nobody can judge
    with RunLock(str(tmp_path), "pretrain", lease_s=5.0) as taken:
        assert lock_record(str(tmp_path))["token"] == taken.holder["token"]


# --- the reader's clock ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_heartbeat_older_than_the_lease_by_the_readers_clock_is_taken_over_at_once(dump: str) -> None:
    plant(dump, heartbeat_at=_iso(-3600))  # a copied run folder: its lock says an hour ago
    taken, took = timed_acquire(dump)
    assert took < 10 and lock_record(dump)["token"] == taken.holder["token"]
    taken.release()


def test_a_heartbeat_in_the_future_within_the_tolerance_is_a_live_holder(local_dump: str) -> None:
    plant(local_dump, heartbeat_at=_iso(SKEW_TOLERANCE_S / 2))
    start = time.monotonic()
    with pytest.raises(UserError, match="another run holds"):
        RunLock(local_dump, "pretrain", lease_s=5.0).acquire()
    assert time.monotonic() - start < 5  # judged at once, not watched


@pytest.mark.parametrize("ahead_s", [3600.0, 86400.0 * 365])
def test_a_future_heartbeat_that_never_changes_is_taken_over_after_one_lease(dump: str, ahead_s: float) -> None:
    lease_s = 1.0
    plant(dump, heartbeat_at=_iso(ahead_s), lease_s=lease_s)  # its host's clock is ahead, and it is gone
    taken, took = timed_acquire(dump)
    # watched for its lease by this host's monotonic clock: at least the lease, at most lease + lease/4 + reads
    assert lease_s <= took < lease_s + lease_s / 4 + 8, took
    assert lock_record(dump)["token"] == taken.holder["token"]
    taken.release()


@pytest.mark.slow  # a holder process
def test_a_live_holder_whose_clock_is_an_hour_ahead_is_refused_within_its_heartbeat_period(dump: str) -> None:
    lease_s = 2.0
    holder = start_holder(dump, lease_s, skew_s=3600)
    try:
        start = time.monotonic()
        with pytest.raises(UserError, match="in this host's future .* still renewed"):
            RunLock(dump, "pretrain", lease_s=lease_s).acquire()
        assert time.monotonic() - start < lease_s + 8
        assert holder.poll() is None
    finally:
        stop(holder)


@pytest.mark.slow  # a holder process
def test_a_live_holder_seen_by_a_reader_whose_clock_is_an_hour_behind_is_refused(dump: str, monkeypatch) -> None:
    lease_s = 2.0
    holder = start_holder(dump, lease_s)
    try:
        real = time.time
        monkeypatch.setattr(lock_module.time, "time", lambda: real() - 3600)  # this host's clock is behind
        with pytest.raises(UserError, match="still renewed"):
            RunLock(dump, "pretrain", lease_s=lease_s).acquire()
    finally:
        monkeypatch.undo()
        stop(holder)


# --- a holder gone from this machine ---------------------------------------------------------------------------

@pytest.mark.slow  # a holder process
@pytest.mark.parametrize("how", ["kill -9", "exit 138 without release"])
def test_a_holder_gone_from_this_machine_is_taken_over_at_once(dump: str, how: str) -> None:
    holder = start_holder(dump, LONG_LEASE_S, then="exit" if how.startswith("exit") else "sleep")
    if how == "kill -9":
        holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    left = lock_record(dump)
    assert left is not None and left["pid"] == holder.pid  # the lock was left behind
    taken, took = timed_acquire(dump)
    assert took < 10, f"took {took:.0f}s: it waited for the lease"
    assert lock_record(dump)["token"] == taken.holder["token"]
    taken.release()


@pytest.mark.slow  # a holder process
def test_a_live_holder_on_this_machine_still_blocks(dump: str) -> None:
    holder = start_holder(dump, LONG_LEASE_S)
    try:
        with pytest.raises(UserError, match=f"another run holds .* pid {holder.pid}"):
            RunLock(dump, "pretrain", lease_s=LONG_LEASE_S).acquire()
        assert lock_record(dump)["pid"] == holder.pid
    finally:
        stop(holder)


def test_the_lock_records_the_machine_and_keeps_its_fields(dump: str) -> None:
    with RunLock(dump, "pretrain", lease_s=5.0) as held:
        record = lock_record(dump)
        assert set(HOLDER_FIELDS) | set(MACHINE_FIELDS) <= set(record)
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["token"] == held.holder["token"]
        if os.path.exists("/proc/sys/kernel/random/boot_id"):
            assert record["boot_id"] and record["pid_ns"] and record["pid_start"]


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
@pytest.mark.parametrize("other", ["boot_id", "pid_ns"])
def test_a_dead_pid_of_another_boot_or_pid_namespace_proves_nothing(s3_dump: str, other: str) -> None:
    machine = lock_module._machine()
    plant(s3_dump, host=socket.gethostname(), pid=_dead_pid(), **{**machine, other: "something else"})
    with pytest.raises(UserError, match="another run holds"):
        RunLock(s3_dump, "pretrain", lease_s=5.0).acquire()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_pid_now_held_by_another_process_is_taken_over(s3_dump: str) -> None:
    machine = lock_module._machine()  # this process is alive, but started at another time than the record says
    plant(s3_dump, host=socket.gethostname(), pid=os.getpid(), **{**machine, "pid_start": "1"})
    taken, took = timed_acquire(s3_dump)
    assert took < 10 and lock_record(s3_dump)["token"] == taken.holder["token"]
    taken.release()
