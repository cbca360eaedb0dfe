"""The one resume mechanism: a checkpoint records the identity of its run, and only the same run resumes it.

The identity is every flag that shapes the saved state or the result (architecture, head and prototype
sizes, optimizer, queue, crops, schedule, seed, ...): all flags but the few a restart may change (workers,
log frequency, device, ...). Resuming compares identities before any state is loaded and refuses a
mismatch with one line listing each differing flag, old -> new. The caller writes params.json only after
this check, so a refused run never overwrites the record of the run it refused.

Every save keeps the checkpoint it replaces as `<name>.prev.<ext>` (a copy with its digest record), so a
full training state survives a damaged latest one: resume falls back to it with one warning, and with
neither intact it refuses (exit 2) naming the damage, never restarting from scratch (docs/integrity.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from trainer import storage
from trainer.errors import UserError

log = logging.getLogger(__name__)

IDENTITY_KEY = "identity"


def identity_of(values: Mapping[str, Any], changeable: Iterable[str] = ()) -> dict[str, Any]:
    """`values` without the `changeable` keys, as plain JSON values (tuples become lists)."""
    skip = set(changeable)
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in skip}, sort_keys=True, default=str))


def legacy_identity(current: Mapping[str, Any], old_values: Callable[[dict[str, Any]], Mapping[str, Any] | None],
                    changeable: Iterable[str] = ()) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """For `load_for_resume`: the identity of a checkpoint written before identities were recorded, from the
    flags it kept (`old_values`); flags it predates count as unchanged."""
    def derive(saved: dict[str, Any]) -> dict[str, Any] | None:
        values = old_values(saved)
        if values is None:
            return None
        old = identity_of(values, changeable)
        return {key: old.get(key, value) for key, value in current.items()}
    return derive


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value) if len(value) <= 8 else f"[{len(value)} values]"
    return "(unset)" if value is None else str(value)


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`--name old -> new` for every key whose value differs (a key missing on one side counts)."""
    return [f"--{key} {_shown(saved.get(key))} -> {_shown(current.get(key))}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def check_identity(url: str, saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Refuse to resume `url` unless it was written by a run with the identity `current`."""
    if saved is None:
        raise UserError(f"{url} records no run identity (written by another program or an old version); use a "
                        f"new --dump_path, or delete {url} and {previous_url(url)} to start over")
    changed = differences(saved, current)
    if changed:
        params = storage.join(url.rsplit("/", 1)[0], "params.json")
        raise UserError(f"{url} belongs to a run with other settings ({'; '.join(changed)}); rerun with the "
                        f"flags it was written with (see {params}) or use a new --dump_path")


def previous_url(url: str) -> str:
    """Where the checkpoint before the one at `url` is kept: `checkpoint.pth.tar` -> `checkpoint.prev.pth.tar`."""
    folder, _, name = url.rpartition("/")
    stem, dot, suffixes = name.partition(".")
    return f"{folder}/{stem}.prev{dot}{suffixes}" if folder else f"{stem}.prev{dot}{suffixes}"


def resume_point(url: str, identity: Mapping[str, Any], map_location: str | torch.device = "cpu",
                 legacy_identity: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
                 ) -> tuple[str, dict[str, Any]] | None:
    """(the URL it came from, the state) of the newest intact checkpoint of this run: the one at `url`, else
    the previous one; None when neither exists (a fresh start). Damage to both is a UserError naming it.

    `legacy_identity` derives the identity of a checkpoint written before identities were recorded.
    """
    candidates = [candidate for candidate in (url, previous_url(url)) if storage.exists(candidate)]
    if not candidates:
        return None
    damage = []
    for candidate in candidates:
        try:
            state = storage.load_torch(candidate, map_location=map_location)
        except storage.IntegrityError as error:
            damage.append(str(error))
            continue
        if candidate != url:
            why = damage[0] if damage else f"{url} does not exist"
            log.warning("%s; resuming from the previous checkpoint %s instead", why, candidate)
        if not isinstance(state, dict):
            raise UserError(f"{candidate} is not a checkpoint of this program; use a new --dump_path or delete it")
        saved = state.get(IDENTITY_KEY)
        if saved is None and legacy_identity is not None:
            saved = legacy_identity(state)
        check_identity(candidate, saved, identity)
        return candidate, state
    if url not in candidates:
        damage.insert(0, f"{url} does not exist")
    if previous_url(url) not in candidates:
        damage.append(f"there is no previous checkpoint {previous_url(url)} to fall back to")
    raise UserError(f"no intact checkpoint to resume: {'; and '.join(damage)}; restore one from a copy, or use a "
                    "new --dump_path to start over")


def load_for_resume(url: str, identity: Mapping[str, Any], map_location: str | torch.device = "cpu",
                    legacy_identity: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
                    ) -> dict[str, Any] | None:
    """The state of `resume_point`, None for a fresh start."""
    found = resume_point(url, identity, map_location, legacy_identity)
    return None if found is None else found[1]


def save_checkpoint(url: str, state: dict[str, Any], identity: Mapping[str, Any]) -> None:
    """Write `state` with the run's identity, atomically and with a digest, keeping the checkpoint it replaces
    at `previous_url(url)` (copied first, so a crash at any point leaves a full state behind)."""
    if storage.exists(url):
        storage.copy_verified(url, previous_url(url))
    storage.save_torch({**state, IDENTITY_KEY: dict(identity)}, url)
