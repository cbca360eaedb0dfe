"""trainer.run.lock: one run per --dump_path, locally and on S3 (moto's real server on loopback, over HTTP).

Leases are 1 s or a few seconds so every test ends within a few seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from trainer import storage
from trainer.errors import RetryableError, UserError
from trainer.run.lock import LOCK_NAME, RunLock


@pytest.fixture(autouse=True)
def no_run_id(monkeypatch):
    monkeypatch.delenv("UNMIX_RUN_ID", raising=False)


@pytest.fixture
def s3_dump(s3_server) -> str:
    return storage.join(s3_server.bucket("run-lock-tests"), uuid.uuid4().hex)


def _iso(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")


def plant(dump: str, data: bytes | None = None, **fields) -> None:
    """Write a lock as another run would have: live, on another host, unless `fields` say otherwise."""
    holder = {"host": "elsewhere", "pid": 4242, "job": "", "command": "pretrain", "started_at": _iso(60),
              "heartbeat_at": _iso(0), "lease_s": 600.0, "token": "theirs", **fields}
    storage.makedirs(dump)
    storage.atomic_write_bytes(storage.join(dump, LOCK_NAME), json.dumps(holder).encode() if data is None else data)


def lock_token(dump: str) -> str | None:
    url = storage.join(dump, LOCK_NAME)
    return json.loads(storage.read_text(url))["token"] if storage.exists(url) else None


def race(dump: str) -> RunLock:
    """Two threads acquire at once; exactly one wins (returned, still held), the other is refused."""
    locks = [RunLock(dump, f"contender {i}", lease_s=5.0) for i in range(2)]
    start = threading.Barrier(2)
    outcomes: dict[int, str] = {}

    def contend(i: int) -> None:
        start.wait()
        try:
            locks[i].acquire()
            outcomes[i] = "won"
        except UserError:
            outcomes[i] = "refused"

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes.values()) == ["refused", "won"]
    winner = locks[next(i for i, outcome in outcomes.items() if outcome == "won")]
    assert lock_token(dump) == winner.holder["token"]
    return winner


def test_second_run_is_refused_with_one_line_naming_the_holder(tmp_path):
    dump = str(tmp_path / "run")
    with RunLock(dump, "pretrain --epochs 3", lease_s=5.0), pytest.raises(UserError) as refused:
        RunLock(dump, "eval_linear", lease_s=5.0).acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"another run holds {dump}: pretrain --epochs 3 on host {socket.gethostname()}, "
                              f"pid {os.getpid()}, since 20")
    assert "heartbeat 0s ago" in message and "use another --dump_path" in message
    assert lock_token(dump) is None


def test_released_lock_is_acquirable_again_and_an_exception_under_with_leaves_none(tmp_path):
    dump = str(tmp_path)
    first = RunLock(dump, "pretrain", lease_s=5.0)
    first.acquire()
    first.release()
    assert lock_token(dump) is None
    with pytest.raises(ValueError), RunLock(dump, "pretrain", lease_s=5.0):
        raise ValueError("the run failed")
    assert lock_token(dump) is None
    with RunLock(dump, "pretrain", lease_s=5.0) as again:
        assert lock_token(dump) == again.holder["token"]
    assert sorted(os.listdir(dump)) == [LOCK_NAME + ".guard"]


@pytest.mark.slow
def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    plant(str(tmp_path), host=socket.gethostname(), pid=gone.pid)
    with RunLock(str(tmp_path), "pretrain", lease_s=5.0) as lock:
        assert lock_token(str(tmp_path)) == lock.holder["token"]


def test_expired_lease_is_taken_over(tmp_path):
    plant(str(tmp_path), heartbeat_at=_iso(5), lease_s=1.0)
    with RunLock(str(tmp_path), "pretrain", lease_s=5.0) as lock:
        assert lock_token(str(tmp_path)) == lock.holder["token"]


def test_same_run_id_takes_over_at_once_another_job_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("UNMIX_RUN_ID", "job-7")
    plant(str(tmp_path / "other"), job="job-8")
    with pytest.raises(UserError, match=r"pid 4242 \(job job-8\)"):
        RunLock(str(tmp_path / "other"), "pretrain", lease_s=5.0).acquire()
    plant(str(tmp_path / "ours"), job="job-7")
    with RunLock(str(tmp_path / "ours"), "pretrain", lease_s=5.0) as lock:
        assert lock_token(str(tmp_path / "ours")) == lock.holder["token"]


def test_garbage_lock_file_is_taken_over(tmp_path):
    plant(str(tmp_path), data=b'{"host": "half-writ')
    with RunLock(str(tmp_path), "pretrain", lease_s=5.0) as lock:
        assert lock_token(str(tmp_path)) == lock.holder["token"]


@pytest.mark.parametrize("round_", range(5))
def test_two_contenders_racing_for_a_stale_lock_exactly_one_wins(tmp_path, round_):
    plant(str(tmp_path), heartbeat_at=_iso(5), lease_s=1.0)
    race(str(tmp_path)).release()
    assert lock_token(str(tmp_path)) is None


def test_heartbeat_keeps_a_live_lock_from_expiring(tmp_path):
    with RunLock(str(tmp_path), "pretrain", lease_s=1.0) as lock:
        time.sleep(3.0)
        with pytest.raises(UserError, match="another run holds"):
            RunLock(str(tmp_path), "pretrain", lease_s=1.0).acquire()
        lock.check()


def test_check_raises_retryable_after_a_take_over_by_someone_else(tmp_path, monkeypatch):
    monkeypatch.setenv("UNMIX_RUN_ID", "job-7")  # a restarted pod of the same job takes over at once
    old = RunLock(str(tmp_path), "pretrain", lease_s=1.0)
    old.acquire()
    try:
        with RunLock(str(tmp_path), "pretrain (restarted)", lease_s=5.0) as new:
            deadline = time.monotonic() + 3.0
            while not old.lost and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(RetryableError, match=r"pretrain \(restarted\) on host .* took it over") as lost:
                old.check()
            assert "\n" not in str(lost.value)
            old.release()  # not ours any more: the new holder's lock stays
            assert lock_token(str(tmp_path)) == new.holder["token"]
        assert lock_token(str(tmp_path)) is None
    finally:
        old.release()


def test_s3_second_run_is_refused_and_a_released_lock_is_acquirable_again(s3_dump):
    refused = pytest.raises(UserError, match=f"another run holds {s3_dump}: pretrain on host ")
    with RunLock(s3_dump, "pretrain", lease_s=5.0), refused:
        RunLock(s3_dump, "pretrain", lease_s=5.0).acquire()
    assert lock_token(s3_dump) is None
    with RunLock(s3_dump, "pretrain", lease_s=5.0) as again:
        assert lock_token(s3_dump) == again.holder["token"]
    assert lock_token(s3_dump) is None


def test_s3_expired_lease_is_taken_over(s3_dump):
    plant(s3_dump, heartbeat_at=_iso(5), lease_s=1.0)
    with RunLock(s3_dump, "pretrain", lease_s=5.0) as lock:
        assert lock_token(s3_dump) == lock.holder["token"]
    assert lock_token(s3_dump) is None


@pytest.mark.parametrize("stale", [True, False], ids=["stale-lock", "no-lock"])
def test_s3_two_contenders_racing_exactly_one_wins(s3_dump, stale):
    if stale:
        plant(s3_dump, heartbeat_at=_iso(5), lease_s=1.0)
    race(s3_dump).release()
    assert lock_token(s3_dump) is None
