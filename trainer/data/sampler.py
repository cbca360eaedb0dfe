"""A distributed sampler that is deterministic per (seed, epoch), shard-local, and can start mid-epoch.

The epoch's global order shuffles the shards, then the samples inside each shard; rank r takes the r-th
contiguous block of equal length (whole batches only), so ranks read disjoint data, mostly whole shards,
and every rank runs the same number of steps. It yields (epoch, index) pairs so that the dataset can
derive each sample's augmentation seed without shared state.

Knowing the rank's shard sequence, it also asks the source it reads (`source`, or the streaming source opened
in this process with these shard numbers: trainer/data/streaming.py) to fetch the next shards ahead, in the
background, each time its order enters a new shard. That touches no order: only when bytes arrive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from trainer import env
from trainer.data import streaming
from trainer.errors import UserError
from trainer.seeding import derive_seed


class ResumableSampler(Sampler[tuple[int, int]]):
    def __init__(self, shard_of: Sequence[int], rank: int, world_size: int, seed: int, batch_size: int,
                 source: Any = None):
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.source = source  # has prefetch(shards); found by its shard numbers when not given
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

    def rank_order(self, epoch: int, start_batch: int = 0) -> np.ndarray:
        """This rank's sample indices in `epoch` from batch `start_batch` on."""
        order = self.epoch_order(epoch)
        mine = order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return mine[start_batch * self.batch_size:]

    def shard_sequence(self, epoch: int) -> list[int]:
        """The shards this rank reads in `epoch`, in order."""
        shards = self.shard_of[self.rank_order(epoch)]
        return shards[np.r_[True, shards[1:] != shards[:-1]]].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.rank_order(self.epoch, self.start_batch)
        source = self.source if self.source is not None else streaming.source_for(self.shard_of)
        if source is None or not len(mine):
            for index in mine:
                yield self.epoch, int(index)
            return
        shards = self.shard_of[mine]
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])  # where each shard's run begins
        sequence = shards[starts]
        count = 1 + env.current().shards_ahead  # this shard and UNMIX_SHARDS_AHEAD more
        for run, start in enumerate(starts):
            # entering a shard: fetch it (if no reader has yet) and the next SHARDS_AHEAD ones, past the end of
            # the epoch into the next one's first shards
            ahead = sequence[run:run + count].tolist()
            if len(ahead) < count:
                ahead += self.shard_sequence(self.epoch + 1)[:count - len(ahead)]
            source.prefetch(ahead)
            end = starts[run + 1] if run + 1 < len(starts) else len(mine)
            for index in mine[start:end]:
                yield self.epoch, int(index)

    def __len__(self) -> int:
        return self.per_rank - self.start_batch * self.batch_size
