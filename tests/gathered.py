"""For tests that spawn a gloo group: every rank's result, gathered and saved by rank 0 for the parent."""

from __future__ import annotations

import torch
import torch.distributed as dist


def save_gathered_and_leave(result: object, world: int, rank: int, out: str) -> None:
    """all_gather_object `result`, rank 0 saves the list to `out`; then the process group ends."""
    gathered: list[object] = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()
