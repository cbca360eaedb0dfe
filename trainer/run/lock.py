"""One run per --dump_path: a lease object `<dump_path>/.run.lock` with a heartbeat.

Rank 0 of a job acquires it (the other ranks never touch it). A second job is refused with one line naming
the holder. A lock is taken over at once when it was left by an earlier pod of the same job (UNMIX_RUN_ID),
when its holder process is gone from this machine (the same host, boot id and pid namespace, and its pid dead
or now another process: the lock records the pid's start time), on local and S3 dump paths alike, or when its
heartbeat is older than its lease by this host's clock (a copied run folder too).

Clocks differ between hosts. A heartbeat stamped more than SKEW_TOLERANCE_S in this host's future says
nothing to this host's clock, so the lock is watched instead: re-read every lease/4 (the holder's heartbeat
period); changed means alive (refused), unchanged for a whole lease by this host's monotonic clock means its
holder is gone (taken over).

Bounds (L: this lock's lease; L_h: the holder's recorded lease, at most MAX_LEASE_S; every store call is
bounded by storage.with_retries): `acquire` makes at most ACQUIRE_ATTEMPTS rounds of (read, [watch], write,
settle S3_SETTLE_S, read), a watch sleeping at most L_h in steps of L_h/4 with at most 5 reads, so acquire
returns within ACQUIRE_ATTEMPTS x (L_h + S3_SETTLE_S + 8 store calls); the heartbeat writes every L/4;
`release` waits for at most one heartbeat write, then one delete.

Every change is a compare-and-swap on the lock's version:
locally under an flock on the sidecar `.run.lock.guard` (it stays), on S3 with conditional PUTs
(If-None-Match: * to create, If-Match: <etag> to replace). A store whose conditional writes are not atomic
(moto's threaded server checks, then writes) or that ignores them (some S3-compatible stores) can let two
contenders both "win"; the last write stands, so a winner re-reads after a settle and owns the lock only if
its own token reads back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Protocol

import fsspec.asyn

from trainer import env, file_lock, storage
from trainer.errors import RetryableError, UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
S3_SETTLE_S = 0.25  # longer than two racing PUTs land apart; only acquisition waits for it
ACQUIRE_ATTEMPTS = 4  # each lost race re-reads; a fresh winner then refuses us with the one-line message
HOLDER_FIELDS = ("host", "pid", "job", "command", "started_at", "heartbeat_at", "lease_s", "token")
# Written too (older locks lack them): a pid identifies a process only on the same boot and pid namespace.
MACHINE_FIELDS = ("boot_id", "pid_ns", "pid_start")
SKEW_TOLERANCE_S = 5.0  # a heartbeat stamped further in this host's future is clock skew, not a fresh heartbeat


class _Store(Protocol):
    """Compare-and-swap on one object: `version` is what `read` returned, None meaning "absent"."""

    settle_s: float

    def read(self) -> tuple[bytes, str] | None: ...

    def write(self, data: bytes, version: str | None) -> str | None:
        """Write if the object is still at `version`; the new version, or None when someone else changed it."""

    def delete(self, version: str) -> bool: ...


class _LocalStore:
    """A file; every operation holds an exclusive flock on `<lock>.guard`, which dies with its process."""

    settle_s = 0.0

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = storage.filesystem(url)[1]

    def _guarded(self) -> contextlib.AbstractContextManager[bool]:
        return file_lock.held(self.path + ".guard")

    def _version(self) -> str | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return f"{stat.st_ino}:{stat.st_mtime_ns}"  # every write is a new file renamed into place

    def read(self) -> tuple[bytes, str] | None:
        with self._guarded():
            version = self._version()
            if version is None:
                return None
            with open(self.path, "rb") as handle:
                return handle.read(), version

    def write(self, data: bytes, version: str | None) -> str | None:
        with self._guarded():
            if self._version() != version:
                return None
            storage.atomic_write_bytes(self.url, data)
            return self._version()

    def delete(self, version: str) -> bool:
        with self._guarded():
            if self._version() != version:
                return False
            os.remove(self.path)
            return True


def _lost_race(error: OSError) -> bool:
    """s3fs turns 412 (If-None-Match) into FileExistsError, a missing key under If-Match into
    FileNotFoundError, and 412 (If-Match) or 409 (concurrent conditional writes) into plain OSErrors."""
    code = getattr(error.__cause__, "response", {}).get("Error", {}).get("Code")
    if code == "NoSuchBucket" or "bucket does not exist" in str(error):
        return False  # not a race: the dump path's bucket is missing, which the error boundary explains
    if isinstance(error, (FileExistsError, FileNotFoundError)):
        return True
    return code in ("PreconditionFailed", "ConditionalRequestConflict")


class _S3Store:
    """An object; versions are ETags and every change is a conditional request."""

    settle_s = S3_SETTLE_S

    def __init__(self, url: str) -> None:
        self.fs, path = storage.filesystem(url)
        self.bucket, self.key, _ = self.fs.split_path(path)

    def read(self) -> tuple[bytes, str] | None:
        async def get() -> tuple[bytes, str]:  # one GET: the body and the ETag of the same version
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        try:
            return fsspec.asyn.sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def write(self, data: bytes, version: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            response = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except OSError as error:
            if _lost_race(error):
                return None
            raise
        return response["ETag"]

    def delete(self, version: str) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except OSError as error:
            if _lost_race(error):
                return False
            raise
        return True


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _age_s(iso: str) -> float:
    return time.time() - datetime.fromisoformat(iso).timestamp()


def _parse(data: bytes) -> dict[str, Any] | None:
    """The holder record, or None for a file that is not one (truncated, foreign, hand-edited, a lease <= 0)."""
    try:
        holder = json.loads(data)
        if not isinstance(holder, dict) or any(field not in holder for field in HOLDER_FIELDS):
            return None
        _age_s(holder["heartbeat_at"])
        if not 0 < float(holder["lease_s"]) < math.inf:
            return None
        int(holder["pid"])
    except (ValueError, TypeError, OverflowError):
        return None
    return holder


def _lease_of(holder: dict[str, Any]) -> float:
    return min(float(holder["lease_s"]), env.MAX_LEASE_S)


def _proc(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:  # not Linux, or a process that is gone or hidden
        return ""


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat field 22); "" when unknown."""
    stat = _proc(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""  # field 2, the name, may hold spaces


def _machine() -> dict[str, str]:
    """This process's boot id, pid namespace and start time ("" each where /proc does not say)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return {"boot_id": _proc("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns,
            "pid_start": _start_time(os.getpid())}


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _describe(holder: dict[str, Any]) -> str:
    job = f" (job {holder['job']})" if holder["job"] else ""
    return f"{holder['command']} on host {holder['host']}, pid {holder['pid']}{job}, since {holder['started_at']}"


class RunLock:
    """The lock of one run on `dump_path`; acquire on rank 0 only, and call `check()` in the training loop."""

    def __init__(self, dump_path: str, command: str, lease_s: float | None = None) -> None:
        self.dump_path = dump_path
        self.lease_s = env.current().lock_lease_s if lease_s is None else float(lease_s)
        if not 0 < self.lease_s <= env.MAX_LEASE_S:  # 0 would let any other run take a live lock over
            raise UserError(f"the run lock's lease must be > 0 and <= {env.MAX_LEASE_S:.0f} s, not {self.lease_s:g} "
                            "(UNMIX_LOCK_LEASE_S)")
        self.url = storage.join(dump_path, LOCK_NAME)
        self.local = storage.is_local(self.url)
        self._store: _Store = _LocalStore(self.url) if self.local else _S3Store(self.url)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "job": env.current().run_id,
                       "command": command, "started_at": "", "heartbeat_at": "", "lease_s": self.lease_s,
                       "token": uuid.uuid4().hex, **_machine()}
        self.lost = False
        self._lost_reason = ""
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _read(self) -> tuple[bytes, str] | None:
        return storage.with_retries(self._store.read, f"reading the run lock {self.url}")

    def _write(self, version: str | None) -> str | None:
        self.holder["heartbeat_at"] = _now_iso()
        data = json.dumps(self.holder, indent=1).encode()
        return storage.with_retries(lambda: self._store.write(data, version), f"writing the run lock {self.url}")

    def _gone_reason(self, holder: dict[str, Any]) -> str | None:
        """Why `holder`'s process is known to be gone from this machine, or None when this machine cannot tell."""
        pid = int(holder["pid"])
        if holder["host"] != self.holder["host"]:
            return None
        if not any(holder.get(field) for field in MACHINE_FIELDS):  # written before these fields: the old rule
            return f"its process {pid} on this host is gone" if self.local and _pid_gone(pid) else None
        if not self.holder["boot_id"] or any(holder.get(field) != self.holder[field] for field in ("boot_id",
                                                                                                 "pid_ns")):
            return None  # another boot, or another container with this host name: its pid means nothing here
        if _pid_gone(pid):
            return f"its process {pid} on this machine is gone"
        started = _start_time(pid)
        if started and holder.get("pid_start") and started != holder["pid_start"]:
            return f"its process {pid} on this machine is gone (the pid now belongs to another process)"
        return None

    def _stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why `holder` may be taken over by what this host knows at once, or None."""
        if holder["job"] and holder["job"] == self.holder["job"]:
            return f"it is this job's own (UNMIX_RUN_ID={holder['job']}), left by an earlier attempt"
        gone = self._gone_reason(holder)
        if gone is not None:
            return gone
        age, lease = _age_s(holder["heartbeat_at"]), _lease_of(holder)
        if age > lease:
            return f"no heartbeat for {age:.0f}s by this host's clock, over its {lease:.0f}s lease"
        return None

    def acquire(self) -> None:
        """Take the lock or raise UserError naming the live holder; then keep it alive from a daemon thread."""
        storage.makedirs(self.dump_path)
        self.holder["started_at"] = _now_iso()
        for _ in range(ACQUIRE_ATTEMPTS):
            found = self._read()
            if found is not None and not self._may_take_over(*found):
                continue  # it changed hands while it was watched: judge the new one
            if self._write(None if found is None else found[1]) is not None and self._confirm():
                self._stop.clear()
                self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
                self._thread.start()
                return
        raise UserError(f"could not take the run lock {self.url}: {ACQUIRE_ATTEMPTS} attempts lost to other runs "
                        "starting at the same time; start one run per --dump_path")

    def _may_take_over(self, data: bytes, version: str) -> bool:
        """True when the lock (`data` at `version`) may be replaced; False when it changed hands while it was
        watched; UserError naming its holder while that is alive."""
        holder = _parse(data)
        if holder is None:
            log.warning("taking over the run lock %s: it is not a lock this code wrote", self.url)
            return True
        reason = self._stale_reason(holder)
        age = _age_s(holder["heartbeat_at"])
        if reason is None and age < -SKEW_TOLERANCE_S:
            reason = self._watch(holder, version, -age)
            if reason is None:
                return False
        if reason is None:
            raise UserError(
                f"another run holds {self.dump_path}: {_describe(holder)}, heartbeat {max(age, 0):.0f}s ago; wait "
                "for it to finish, stop it, or use another --dump_path (a lock without heartbeat for "
                f"{_lease_of(holder):.0f}s is taken over)")
        log.warning("taking over the run lock %s from %s: %s", self.url, _describe(holder), reason)
        return True

    def _watch(self, holder: dict[str, Any], version: str, ahead_s: float) -> str | None:
        """Judge a holder whose heartbeat is stamped `ahead_s` in this host's future by whether the lock changes:
        re-read every L_h/4 for at most L_h = its lease (this host's monotonic clock). Unchanged: the reason to
        take it over. Renewed by the same holder: UserError. Deleted or another holder's: None."""
        lease = _lease_of(holder)
        log.warning("the run lock %s has a heartbeat %.0fs in this host's future (the two hosts' clocks differ; "
                    "check NTP): watching it up to %.0fs to tell whether %s is alive", self.url, ahead_s, lease,
                    _describe(holder))
        deadline = time.monotonic() + lease
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(lease / 4, left))
            found = self._read()
            if found is not None and found[1] == version:
                continue
            again = None if found is None else _parse(found[0])
            if again is not None and again["token"] == holder["token"]:
                raise UserError(
                    f"another run holds {self.dump_path}: {_describe(holder)}; its heartbeat is stamped "
                    f"{ahead_s:.0f}s in this host's future (the hosts' clocks differ: check NTP) and it is still "
                    "renewed; wait for it to finish, stop it, or use another --dump_path")
            return None
        return (f"its heartbeat, stamped {ahead_s:.0f}s in this host's future (clock skew), did not change for "
                f"{lease:.0f}s by this host's clock, its whole lease")

    def _confirm(self) -> bool:
        """Our token reads back after the settle: the write that stands is ours (see the module docstring)."""
        time.sleep(self._store.settle_s)
        found = self._read()
        holder = None if found is None else _parse(found[0])
        if holder is None or holder["token"] != self.holder["token"]:
            return False
        self._version = found[1]
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                version = self._write(self._version)
                if version is None:
                    self._mark_lost()
                    return
            except Exception as error:  # the store may come back before the lease runs out: keep trying
                log.warning("run lock heartbeat on %s failed: %s", self.url, storage.describe(error))
                continue
            self._version = version

    def _mark_lost(self) -> None:
        try:  # who holds it now, for the message
            found = self._read()
            holder = None if found is None else _parse(found[0])
            by = "it was deleted" if holder is None else f"{_describe(holder)} took it over"
        except Exception as error:
            by = f"another run took it over ({storage.describe(error)} when reading who)"
        self._lost_reason = (f"lost the run lock on {self.dump_path}: {by}; this run stops so that two runs never "
                             "write one --dump_path")
        self.lost = True
        log.error("%s", self._lost_reason)

    def check(self) -> None:
        """Raise RetryableError once another run has taken the lock over: the caller must stop writing."""
        if self.lost:
            raise RetryableError(self._lost_reason)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours; a no-op when not held."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.lost or self._version is None:
            return
        version, self._version = self._version, None
        if not storage.with_retries(lambda: self._store.delete(version), f"deleting the run lock {self.url}"):
            log.warning("run lock %s was taken over before release; left to its new holder", self.url)
