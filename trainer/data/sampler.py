"""A distributed sampler that is deterministic per (seed, epoch), shard-local, and can start mid-epoch.

The epoch's global order shuffles the shards, then the samples inside each shard; rank r takes the r-th
contiguous block of equal length (whole batches only), so ranks read disjoint data, mostly whole shards,
and every rank runs the same number of steps. It yields (epoch, index) pairs so that the dataset can
derive each sample's augmentation seed without shared state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from trainer.errors import UserError
from trainer.seeding import derive_seed


class ResumableSampler(Sampler[tuple[int, int]]):
    def __init__(self, shard_of: Sequence[int], rank: int, world_size: int, seed: int, batch_size: int):
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.rank, self.world_size, self.seed, self.batch_size = rank, world_size, seed, batch_size
        self.per_rank = len(self.shard_of) // world_size // batch_size * batch_size
        if self.per_rank == 0:
            raise UserError(
                f"the dataset has {len(self.shard_of)} images, fewer than one batch per process "
                f"(batch_size {batch_size} x {world_size} processes); lower --batch_size or add data")
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch `epoch`, skipping its first `start_batch` batches (exact mid-epoch resume)."""
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of sample indices in `epoch` (the same on every rank)."""
        rng = np.random.default_rng(derive_seed(self.seed, epoch))
        num_shards = int(self.shard_of.max()) + 1 if len(self.shard_of) else 0
        shard_rank = rng.permutation(num_shards)
        keys = shard_rank[self.shard_of] + rng.random(len(self.shard_of))
        return np.argsort(keys, kind="stable")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order(self.epoch)
        mine = order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        for index in mine[self.start_batch * self.batch_size:]:
            yield self.epoch, int(index)

    def __len__(self) -> int:
        return self.per_rank - self.start_batch * self.batch_size
