"""A Dataset over an ImageSource that yields (index, shard, pixels) for sampler items (epoch, index): the
staged and WebDataset loader tests read which sample came from which shard through it."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class IndexAndPixels(Dataset):
    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int, torch.Tensor]:
        _, index = item
        return index, self.source.shard_of(index), torch.from_numpy(np.asarray(self.source.load(index)).copy())
