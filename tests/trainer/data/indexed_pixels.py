"""A Dataset over an ImageSource that yields (index, shard, pixels) for sampler items (epoch, index), and the
loader one of two ranks reads it with: the staged and WebDataset loader tests read which sample came from which
shard through them."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.data.sampler import ResumableSampler


class IndexAndPixels(Dataset):
    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int, torch.Tensor]:
        _, index = item
        return index, self.source.shard_of(index), torch.from_numpy(np.asarray(self.source.load(index)).copy())


def rank_loader(source, shard_of: list[int], rank: int, seed: int, batch_size: int, epoch: int = 0) -> DataLoader:
    """What rank `rank` of 2 reads in `epoch`: batches of (indices, shards, pixels), from 2 forked workers."""
    sampler = ResumableSampler(shard_of, rank=rank, world_size=2, seed=seed, batch_size=batch_size)
    sampler.set_epoch(epoch)
    return DataLoader(IndexAndPixels(source), batch_size=batch_size, sampler=sampler, num_workers=2,
                      multiprocessing_context="fork")
