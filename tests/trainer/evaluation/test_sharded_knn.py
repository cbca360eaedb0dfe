"""The kNN bank split across 2 gloo processes gives the votes of the whole bank (distributed top-k merge)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.gathered import save_gathered_and_leave
from trainer.distributed import DistEnv
from trainer.evaluation import knn

BANK, QUERIES, DIM, CLASSES, K = 37, 23, 8, 5, 7


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(BANK, DIM, generator=generator)
    labels = torch.randint(CLASSES, (BANK,), generator=generator)
    queries = torch.randn(QUERIES, DIM, generator=generator)
    return bank, labels, queries


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    knn.QUERY_CHUNK = 4  # several rounds, and shares of different lengths (12 and 11 queries)
    bank, labels, queries = _data()
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    normalise = torch.nn.functional.normalize
    # Bank parts of different sizes, one smaller than k: rank 0 holds 3 rows, rank 1 the other 34.
    part = slice(0, 3) if rank == 0 else slice(3, None)
    votes = knn.sharded_knn_votes(normalise(bank[part], dim=1), labels[part], normalise(queries[rank::world], dim=1),
                                  CLASSES, K, 0.07, env)
    save_gathered_and_leave(votes, world, rank, out)


@pytest.mark.slow
def test_split_bank_votes_equal_whole_bank_votes(tmp_path: Path) -> None:
    out = str(tmp_path / "votes.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    shares = torch.load(out, weights_only=True)
    bank, labels, queries = _data()
    whole = knn.weighted_knn_votes(bank, labels, queries, CLASSES, K, 0.07)
    torch.testing.assert_close(shares[0], whole[0::2])
    torch.testing.assert_close(shares[1], whole[1::2])
