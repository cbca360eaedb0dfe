import numpy as np
import pytest

from trainer.data.sampler import ResumableSampler
from trainer.errors import UserError


def indices(sampler):
    return [index for _, index in sampler]


def test_ranks_are_disjoint_equal_and_deterministic():
    shard_of = np.repeat(np.arange(10), 13)  # 130 samples in 10 shards
    samplers = [ResumableSampler(shard_of, rank, 3, seed=5, batch_size=4) for rank in range(3)]
    for s in samplers:
        s.set_epoch(2)
    parts = [indices(s) for s in samplers]
    assert all(len(p) == 40 for p in parts)  # 130 // 3 // 4 * 4
    assert len(set().union(*map(set, parts))) == 120
    again = ResumableSampler(shard_of, 1, 3, seed=5, batch_size=4)
    again.set_epoch(2)
    assert indices(again) == parts[1]
    again.set_epoch(3)
    assert indices(again) != parts[1]


def test_order_keeps_shards_contiguous():
    shard_of = np.repeat(np.arange(8), 25)
    sampler = ResumableSampler(shard_of, 0, 1, seed=0, batch_size=5)
    order = sampler.epoch_order(0)
    shard_sequence = shard_of[order]
    assert (np.diff(shard_sequence) != 0).sum() == 7  # each shard read in one run


def test_mid_epoch_start_yields_the_tail():
    sampler = ResumableSampler([0] * 50, 0, 2, seed=1, batch_size=5)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_batch=3)
    assert list(sampler) == full[15:] and len(sampler) == len(full) - 15
    assert all(epoch == 4 for epoch, _ in full)


def test_too_small_dataset_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one batch"):
        ResumableSampler([0] * 10, 0, 2, seed=0, batch_size=8)
