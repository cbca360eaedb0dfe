"""--syncbn_process_group_size builds the SyncBatchNorm groups it asks for (4 gloo processes), and --compile
with SyncBatchNorm is refused with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.gathered import save_gathered_and_leave
from trainer.distributed import DistEnv, syncbn_group
from trainer.errors import UserError
from trainer.models.heads import SwAVHead, SwAVModel
from trainer.models.resnet import build_trunk
from trainer.swav_step import check_compile, convert_syncbn

WORLD = 4


def _tiny_model() -> SwAVModel:
    trunk, width = build_trunk("resnet_tiny")
    return SwAVModel(trunk, SwAVHead(width, 32, 16, 20))


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    env = DistEnv(rank, WORLD, rank, torch.device("cpu"))
    seen: dict[str, object] = {}
    model = convert_syncbn(_tiny_model(), 2, env)  # node-local groups of 2: {0, 1} and {2, 3}
    layers = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    seen["layers"] = len(layers)
    seen["group_ranks"] = sorted({tuple(dist.get_process_group_ranks(m.process_group)) for m in layers})
    total = torch.tensor([float(rank)])
    dist.all_reduce(total, group=layers[0].process_group)  # sums within the group only
    seen["group_sum"] = total.item()
    whole, _ = syncbn_group(8, env)  # at least the world size: the default group (all ranks)
    seen["whole"] = whole is None
    seen["per_gpu"] = sum(isinstance(m, nn.SyncBatchNorm) for m in convert_syncbn(_tiny_model(), 1, env).modules())
    try:
        syncbn_group(3, env)
    except UserError as error:
        seen["refused"] = str(error)
    save_gathered_and_leave(seen, WORLD, rank, out)


@pytest.mark.slow
def test_groups_of_two_on_four_processes(tmp_path: Path) -> None:
    out = str(tmp_path / "seen.pt")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    seen = torch.load(out, weights_only=False)
    bn_layers = sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in _tiny_model().modules())
    for rank, view in enumerate(seen):
        group = (0, 1) if rank < 2 else (2, 3)
        assert view["layers"] == bn_layers and view["group_ranks"] == [group]
        assert view["group_sum"] == sum(group)
        assert view["whole"] and view["per_gpu"] == 0
        assert "does not divide the 4 processes" in view["refused"]


def test_compile_with_syncbn_is_refused_with_its_reason() -> None:
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_tiny_model())
    env = DistEnv(0, 8, 0, torch.device("cpu"))
    refusal = r"SyncBatchNorm \(\d+ layers\) is refused.*45 graphs.*161302.*107372.*--sync_bn none"
    with pytest.raises(UserError, match=refusal):
        check_compile(model, env)
    check_compile(_tiny_model(), env)  # plain BatchNorm compiles
