"""Every environment variable the product reads, in one table: parsed once, typed and range-checked.

The CLI calls `current()` inside the error boundary before it sets up logging or does any work, so a bad
value is one line (exit 2) naming the variable, its value and what is accepted, never a traceback halfway
through a run. Code reads the parsed, frozen `Env` at use (`env.current().storage_retries`), never
`os.environ` at import. The parse is cached, keyed by the raw values: a process whose environment does not
change parses it once; a test that changes a variable gets it parsed again.

Variables that other systems own (AWS_*, MLFLOW_*, OMP_NUM_THREADS, ...) are listed in the same table for
the docs (`field` None) and read where they are used. docs/environment.md holds the table that
`python -m trainer.env` prints; a test keeps the two equal.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from trainer.errors import UserError

Parser = Callable[[str], Any]  # raw text -> value; ValueError when the text is not accepted


@dataclass(frozen=True)
class Variable:
    name: str
    field: str | None  # the attribute of Env; None: owned by another system, read where it is used
    parse: Parser | None
    accepted: str  # the accepted values, in words (the refusal line and the docs say it)
    default: str | None  # the raw default, parsed like a user's value; None: unset
    what: str
    set_by: str
    shown_default: str = ""  # the docs' default when it is not the raw one (a computed default)


def integer(low: int, high: int) -> tuple[Parser, str]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
            raise ValueError(text)
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse, f"an integer from {low} to {high}"


def number(low: float, high: float, low_open: bool = False) -> tuple[Parser, str]:
    def parse(text: str) -> float:
        value = float(text)  # ValueError for "10GB", "abc"
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise ValueError(text)
        return value

    return parse, f"a number {'>' if low_open else '>='} {low:g} and <= {high:.0f}"


def _choice(*values: str) -> tuple[Parser, str]:
    def parse(text: str) -> bool:
        if text not in values:
            raise ValueError(text)
        return text == values[-1]

    return parse, " or ".join(values)


def _text(text: str) -> str:
    return text


def _host(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", text):  # a DNS name, IPv4 or IPv6 address: no scheme or path
        raise ValueError(text)
    return text


def _local_folder_or_off(text: str) -> str:
    if not text.strip() or "://" in text:
        raise ValueError(text)
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text


MAX_LEASE_S = 86400.0  # a day; the run lock's watch of a skewed heartbeat waits at most this long
LAUNCHER = "torchrun / the Training Operator / the local harness"
YOU = "you"
SPEC = "the job spec (launch/spec.py)"

VARIABLES: tuple[Variable, ...] = (
    Variable("RANK", "rank", *integer(0, 65535), "0", "this process's rank; must be below WORLD_SIZE", LAUNCHER),
    Variable("WORLD_SIZE", "world_size", *integer(1, 65536), "1", "processes in the job; 1: no process group",
             LAUNCHER),
    Variable("LOCAL_RANK", "local_rank", *integer(0, 65535), "0",
             "this process's rank on its node (its GPU); below LOCAL_WORLD_SIZE when that is set, else below "
             "WORLD_SIZE", LAUNCHER),
    Variable("LOCAL_WORLD_SIZE", "local_world_size", *integer(1, 65536), "1",
             "processes of the job on this node (divides the node's CPUs)", LAUNCHER),
    Variable("MASTER_ADDR", "master_addr", _host, "a host name or IP address", None,
             "rendezvous host; required when WORLD_SIZE > 1", LAUNCHER),
    Variable("MASTER_PORT", "master_port", *integer(1, 65535), None, "rendezvous port; required when WORLD_SIZE > 1",
             LAUNCHER),
    Variable("UNMIX_STORAGE_RETRIES", "storage_retries", *integer(1, 100), "8",
             "attempts of one storage operation before the run ends with 138", YOU),
    Variable("UNMIX_STORAGE_RETRY_DELAY", "storage_retry_delay_s", *number(0.01, 60), "1.0",
             "seconds before the first retry; doubled per retry, at most 30 s", YOU),
    Variable("UNMIX_READ_TIMEOUT_S", "read_timeout_s", *number(0, 86400), "300",
             "seconds a DataLoader waits for a batch before the run ends with 138 (a stalled read); 0: no limit",
             YOU),
    Variable("UNMIX_SHARD_READAHEAD_MB", "shard_readahead_mb", *integer(0, 1024), "8",
             "MiB read ahead in shard order by ranged reads (UNMIX_SHARD_CACHE=off)", YOU),
    Variable("UNMIX_SHARDS_AHEAD", "shards_ahead", *integer(0, 64), "2",
             "whole shards fetched into the shard cache ahead of the one being read", YOU),
    Variable("UNMIX_SHARD_CACHE", "shard_cache", _local_folder_or_off, "off or a local folder", None,
             "where whole shards of remote datasets are cached; off: one ranged read per sample", f"{YOU}, {SPEC}",
             "<tmp>/unmix-shard-cache-<uid> for remote data"),
    Variable("UNMIX_SHARD_CACHE_GB", "shard_cache_gb", *number(0, 1e6), None, "the shard cache's cap in GiB",
             f"{YOU}, {SPEC}", "half the free space of its disk, at most 50"),
    Variable("UNMIX_VERIFY_SHARDS", "verify_shards", *_choice("0", "1"), "1",
             "1: shards are hashed as they stream into the shard cache and checked on reuse; 0: no hashing or "
             "digest records (to measure their cost)", YOU),
    Variable("UNMIX_INDEX_CACHE", "index_cache", _not_blank, "a folder or fsspec URL", None,
             "where indexes of WebDataset shard sets read directly are kept", YOU, "~/.cache/unmix-swav/tar-index"),
    Variable("UNMIX_MAX_IMAGE_PIXELS", "max_image_pixels", *integer(1, 2**40), "89478485",
             "images with more pixels are refused as decompression bombs (PIL's default limit)", YOU),
    Variable("UNMIX_LOCK_LEASE_S", "lock_lease_s", *number(1, MAX_LEASE_S), "120",
             "the run lock's lease: a holder without heartbeat this long is taken over (heartbeat every lease/4)",
             YOU),
    Variable("UNMIX_RUN_ID", "run_id", _text, "any text", "",
             "the job's identity: a restarted pod of the same job takes over its own run lock at once",
             f"{SPEC} (the job's name)", "empty"),
    Variable("UNMIX_PROGRESS_EVERY_S", "progress_every_s", *number(0, 86400, low_open=True), "30",
             "seconds between progress lines when stderr is not a terminal", YOU),
    Variable("UNMIX_COLLECTIVE_TIMEOUT_MIN", "collective_timeout_min", *number(0, 10080, low_open=True), "30",
             "minutes a collective waits for a dead or stalled rank before the run ends with 138", YOU),
    Variable("UNMIX_DEBUG", "debug", *_choice("0", "1"), "0", "1: print the traceback of an unexpected error too",
             YOU),
    # Owned by other systems: listed for the docs, read where they are used.
    Variable("UNMIX_SWAV_IMAGE", None, None, "an image reference", None,
             "the trainer image `python -m pipeline compile` puts in the pipeline", YOU, "the released image"),
    Variable("AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL", None, None, "a URL", None,
             "the S3 endpoint (MinIO, Ceph, moto); unset: AWS", f"{YOU}, the pod's Secret"),
    Variable("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION", None, None, "as botocore",
             None, "S3 credentials and region (or an IAM role); never printed", f"{YOU}, the pod's Secret"),
    Variable("MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME", None, None, "as MLflow", None,
             "set: runs are also tracked in MLflow (experiment default unmix-swav)", YOU),
    Variable("OMP_NUM_THREADS", None, None, "as torch", None, "intra-op threads per rank", SPEC),
    Variable("CC, CXX", None, None, "a compiler", None, "the C/C++ compiler torch.compile uses", YOU, "cc / g++"),
    Variable("TORCH_NCCL_ASYNC_ERROR_HANDLING", None, None, "as torch", None,
             "set to 2 when unset, so a failed NCCL collective raises instead of aborting", "the trainer", "2"),
    Variable("HOSTNAME", None, None, "a pod name", None, "the launching pod, which owns the jobs it creates",
             "Kubernetes"),
)


@dataclass(frozen=True)
class Env:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str | None
    master_port: int | None
    storage_retries: int
    storage_retry_delay_s: float
    read_timeout_s: float
    shard_readahead_mb: int
    shards_ahead: int
    shard_cache: str | None
    shard_cache_gb: float | None
    verify_shards: bool
    index_cache: str | None
    max_image_pixels: int
    lock_lease_s: float
    run_id: str
    progress_every_s: float
    collective_timeout_min: float
    debug: bool

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


PARSED = tuple(variable for variable in VARIABLES if variable.field is not None)
_NAMES = tuple(variable.name for variable in PARSED)
_cache: tuple[tuple[str | None, ...], Env] | None = None


def _refuse(variable: Variable, raw: str, why: str) -> UserError:
    shown = raw if len(raw) <= 80 else raw[:80] + "..."
    return UserError(f"environment variable {variable.name}={shown!r} {why}; fix or unset it")


def parse(environ: Mapping[str, str]) -> Env:
    """The Env of `environ`; UserError naming the first variable whose value is not accepted."""
    values: dict[str, Any] = {}
    for variable in PARSED:
        raw = environ.get(variable.name)
        if not raw:  # an empty value counts as unset
            values[variable.field] = None if variable.default is None else variable.parse(variable.default)
            continue
        try:
            values[variable.field] = variable.parse(raw)
        except ValueError:
            raise _refuse(variable, raw, f"is not accepted: it takes {variable.accepted}") from None
    settings = Env(**values)
    by_name = {variable.name: variable for variable in PARSED}
    if settings.rank >= settings.world_size:
        raise _refuse(by_name["RANK"], str(settings.rank), f"is not below WORLD_SIZE={settings.world_size}: ranks "
                      "run from 0 to WORLD_SIZE - 1 (the launcher's environment is inconsistent)")
    local_bound = "LOCAL_WORLD_SIZE" if environ.get("LOCAL_WORLD_SIZE") else "WORLD_SIZE"
    if settings.local_rank >= values[by_name[local_bound].field]:
        raise _refuse(by_name["LOCAL_RANK"], str(settings.local_rank),
                      f"is not below {local_bound}={values[by_name[local_bound].field]}")
    if settings.is_distributed:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if values[by_name[name].field] is None:
                raise UserError(f"environment variable {name} is not set, but WORLD_SIZE={settings.world_size} "
                                f"needs it for the rendezvous (it takes {by_name[name].accepted}); start the "
                                "ranks with torchrun or the job launcher, which set it")
    return settings


def current() -> Env:
    """The parsed environment of this process (parsed again only when a variable changed)."""
    global _cache
    key = tuple(map(os.environ.get, _NAMES))
    if _cache is None or _cache[0] != key:
        _cache = (key, parse(os.environ))
    return _cache[1]


def current_or_defaults() -> Env:
    """`current()`, or the defaults when the environment is invalid: for the error report, which must not fail
    on the very error it reports."""
    try:
        return current()
    except UserError:
        return parse({})


def markdown_table() -> str:
    """The table of docs/environment.md."""
    rows = ["| Variable | Type | Default | Accepted | What it does | Set by |", "|---|---|---|---|---|---|"]
    for variable in VARIABLES:
        kind = "external" if variable.field is None else _type_name(variable.field)
        default = variable.shown_default or ("unset" if variable.default is None else f"`{variable.default}`")
        names = ", ".join(f"`{name}`" for name in variable.name.split(", "))
        rows.append(f"| {names} | {kind} | {default} | {variable.accepted} | {variable.what} | {variable.set_by} |")
    return "\n".join(rows) + "\n"


def _type_name(field: str) -> str:
    annotation = str(next(f.type for f in fields(Env) if f.name == field))
    return annotation.replace(" | None", "")


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
