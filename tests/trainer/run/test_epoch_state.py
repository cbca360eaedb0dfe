"""The epoch state of the evaluation and DETR loops: saved whole, restored whole, older layouts read."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.distributed import DistEnv
from trainer.errors import UserError
from trainer.run import epoch_state
from trainer.run.epoch_state import EpochState
from trainer.run.session import RunSession

IDENTITY = {"command": "eval-test", "lr": 0.1}
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _objects(seed: int) -> dict[str, object]:
    """A model, its optimizer and its scheduler, all with state that differs from a fresh one after a step."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1], gamma=0.5)
    model(torch.randn(8, 3)).square().mean().backward()
    optimizer.step()
    scheduler.step()
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_every_named_object_and_field_survives_a_round_trip(tmp_path: Path, caplog) -> None:
    saved_objects = _objects(seed=1)
    state = EpochState(epoch=3, step=7, history=[{"epoch": 1, "loss": 0.5}], extra={"confusion": [[2, 0], [1, 1]]})
    with RunSession("eval-test", str(tmp_path), CPU) as session:
        assert epoch_state.read(session, IDENTITY) is None  # nothing saved yet: a fresh start
        epoch_state.save(session, state, **saved_objects)

    fresh = _objects(seed=2)
    assert not _same(fresh["model"].state_dict(), saved_objects["model"].state_dict())
    with RunSession("eval-test", str(tmp_path), CPU) as session, caplog.at_level(logging.INFO):
        restored = epoch_state.restore(epoch_state.read(session, IDENTITY), **fresh)
    assert restored == state
    for name, target in saved_objects.items():
        assert _same(fresh[name].state_dict(), target.state_dict()), name
    assert f"resumed from {tmp_path}/checkpoint.pth.tar after epoch 3" in caplog.text
    on_disk = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert set(on_disk) == {"epoch_state", "epoch", "step", "history", "confusion", "model", "optimizer",
                            "scheduler", "identity"}


def test_no_checkpoint_restores_a_fresh_state_and_leaves_the_objects_alone(tmp_path: Path) -> None:
    objects = _objects(seed=1)
    before = objects["model"].state_dict()
    with RunSession("eval-test", str(tmp_path), CPU) as session:
        assert epoch_state.restore(epoch_state.read(session, IDENTITY), **objects) == EpochState()
    assert _same(objects["model"].state_dict(), before)


def test_an_older_file_name_and_layout_is_read_through_the_upgrade(tmp_path: Path) -> None:
    # The layout DETR wrote before the epoch state: checkpoint.pth, `lr_scheduler`, `global_step`, and `epoch`
    # the index of the last finished epoch.
    saved_objects = _objects(seed=1)
    torch.save({"model": saved_objects["model"].state_dict(), "optimizer": saved_objects["optimizer"].state_dict(),
                "lr_scheduler": saved_objects["scheduler"].state_dict(), "epoch": 4, "global_step": 30,
                "history": [{"epoch": e} for e in range(5)], "identity": IDENTITY}, tmp_path / "checkpoint.pth")

    def upgrade(old: dict) -> dict:
        values = {k: v for k, v in old.items() if k not in ("lr_scheduler", "global_step")}
        return {**values, "epoch": old["epoch"] + 1, "step": old["global_step"], "scheduler": old["lr_scheduler"]}

    fresh = _objects(seed=2)
    with RunSession("eval-test", str(tmp_path), CPU) as session:
        saved = epoch_state.read(session, IDENTITY, fallbacks=("checkpoint.pth",), upgrade=upgrade)
        assert saved is not None and saved.url == f"{tmp_path}/checkpoint.pth"
        state = epoch_state.restore(saved, **fresh)
        assert (state.epoch, state.step, len(state.history), state.extra) == (5, 30, 5, {})
        assert _same(fresh["scheduler"].state_dict(), saved_objects["scheduler"].state_dict())
        epoch_state.save(session, state, **fresh)  # saved again under the one name, in the one layout
    written = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert (written["epoch_state"], written["epoch"], written["step"]) == (1, 5, 30)
    assert "lr_scheduler" not in written and "global_step" not in written


def test_a_checkpoint_of_another_run_is_still_refused(tmp_path: Path) -> None:
    with RunSession("eval-test", str(tmp_path), CPU) as session:
        epoch_state.read(session, IDENTITY)
        epoch_state.save(session, EpochState(epoch=1), **_objects(seed=1))
    with RunSession("eval-test", str(tmp_path), CPU) as session, pytest.raises(UserError, match="--lr 0.1 -> 0.2"):
        epoch_state.read(session, {**IDENTITY, "lr": 0.2})


@pytest.mark.parametrize(("values", "message"), [
    ({"epoch_state": 1, "epoch": 1, "step": 1, "history": [], "model": {}}, "holds no optimizer, scheduler"),
    ({"epoch_state": 2, "epoch": 1, "step": 1, "history": []}, "epoch state version 2"),
])
def test_a_checkpoint_it_cannot_restore_is_refused_in_one_line(tmp_path: Path, values: dict, message: str) -> None:
    torch.save({**values, "identity": IDENTITY}, tmp_path / "checkpoint.pth.tar")
    with RunSession("eval-test", str(tmp_path), CPU) as session, pytest.raises(UserError, match=message):
        epoch_state.restore(epoch_state.read(session, IDENTITY), **_objects(seed=1))


def test_an_old_layout_missing_a_value_its_upgrade_needs_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.save({"epoch": 0, "identity": IDENTITY}, tmp_path / "checkpoint.pth.tar")
    with RunSession("eval-test", str(tmp_path), CPU) as session, \
            pytest.raises(UserError, match="holds no 'global_step'"):
        epoch_state.read(session, IDENTITY, upgrade=lambda old: {**old, "step": old["global_step"]})


def test_ranks_other_than_the_main_one_write_nothing(tmp_path: Path) -> None:
    session = RunSession("eval-test", str(tmp_path), DistEnv(rank=1, world_size=2, local_rank=1,
                                                            device=torch.device("cpu")))
    session.identity = dict(IDENTITY)
    epoch_state.save(session, EpochState(epoch=1), **_objects(seed=1))
    assert not (tmp_path / "checkpoint.pth.tar").exists()
