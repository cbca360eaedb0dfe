"""One shape of state for the epoch loops (the evaluations and DETR): saved whole after every epoch, resumed whole.

    saved = read(session, identity)                       # the resume check; None for a fresh start
    state = restore(saved, model=m, optimizer=o, scheduler=s)
    ...                                                   # after each epoch: state.epoch += 1, history, step
    save(session, state, model=m, optimizer=o, scheduler=s)

`<dump_path>/checkpoint.pth.tar` holds, besides the run identity (trainer.run.resume), at the top level:
  epoch      epochs completed, which is also the 0-based index of the next epoch to run
  step       the loop's metrics step after them (DETR: optimisation steps; an evaluation: its epochs)
  history    one row per completed epoch, as metrics.json shows it
  <name>     the state dict of each named object (model, optimizer, scheduler)
  <key>      what the loop keeps besides (`extra`: the last confusion matrix, ...)
  epoch_state  the layout's version; the files written before it have none and go through the loop's
             `upgrade` (DETR's checkpoint.pth: `lr_scheduler`, `global_step`, epoch = the last one finished).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from trainer.errors import UserError
from trainer.run.resume import IDENTITY_KEY
from trainer.run.session import RunSession

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pth.tar"
VERSION_KEY, VERSION = "epoch_state", 1
FIELDS = ("epoch", "step", "history")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


@dataclass
class EpochState:
    epoch: int = 0  # epochs completed = the 0-based index of the next epoch to run
    step: int = 0  # the metrics step reached (trainer.run.metrics drops records after it on resume)
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Saved:
    """A checkpoint of this run in the current layout, and where it was read."""

    url: str
    values: dict[str, Any]


def read(session: RunSession, identity: Mapping[str, Any], name: str = CHECKPOINT, *,
         fallbacks: Sequence[str] = (), upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
         map_location: str | torch.device = "cpu",
         legacy_identity: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> Saved | None:
    """Checkpoint `name` (else the first of `fallbacks`, older file names, that exists) of this run through the
    session's resume check, None to start fresh. A file without the layout's version is the loop's older
    layout: `upgrade` turns its values into this one's."""
    for candidate in (name, *fallbacks):
        values = session.resume(candidate, identity, map_location, legacy_identity)
        if values is None:
            continue
        url = session.resumed_from or session.url(candidate)
        if VERSION_KEY not in values and upgrade is not None:
            try:
                values = upgrade(values)
            except KeyError as missing:
                raise UserError(f"{url} holds no {missing}: not a checkpoint of this command's epoch loop; use a "
                                "new --dump_path or delete it to start over") from None
        elif VERSION_KEY in values and values[VERSION_KEY] != VERSION:
            raise UserError(f"{url} holds epoch state version {values[VERSION_KEY]}, which this version cannot "
                            f"read (it reads {VERSION}); resume with the version that wrote it or use a new "
                            "--dump_path")
        return Saved(url, values)
    return None


def restore(saved: Saved | None, **objects: Stateful) -> EpochState:
    """The epoch state in `saved`, each named object loaded from its state dict; a fresh one for None."""
    if saved is None:
        return EpochState()
    values = saved.values
    missing = [key for key in (*FIELDS, *objects) if key not in values]
    if missing:
        raise UserError(f"{saved.url} holds no {', '.join(missing)}: not a checkpoint of this command's epoch "
                        "loop; use a new --dump_path or delete it to start over")
    for name, target in objects.items():
        target.load_state_dict(values[name])
    skip = {*FIELDS, *objects, VERSION_KEY, IDENTITY_KEY}
    state = EpochState(int(values["epoch"]), int(values["step"]), list(values["history"]),
                       {key: value for key, value in values.items() if key not in skip})
    log.info("resumed from %s after epoch %d", saved.url, state.epoch)
    return state


def save(session: RunSession, state: EpochState, name: str = CHECKPOINT, **objects: Stateful) -> None:
    """Write `state` and each named object's state dict as checkpoint `name` of the session (main rank only)."""
    reserved = {*FIELDS, VERSION_KEY, IDENTITY_KEY}
    assert not (reserved | set(objects)) & set(state.extra) and not reserved & set(objects), "a key used twice"
    if not session.env.is_main:
        return
    session.save(name, {VERSION_KEY: VERSION, "epoch": state.epoch, "step": state.step, "history": state.history,
                        **state.extra, **{key: target.state_dict() for key, target in objects.items()}})
