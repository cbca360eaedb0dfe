"""Peak host memory of the cached-feature extraction, per rank, at a size where the old assembly doubled it.

The old code gave every rank a zeroed full N x D matrix, filled its own rows from a list of chunks and their
concatenation, then all-reduced it: at the fill its peak held the full matrix plus two copies of its share,
2 x N x D x 4 bytes with 2 ranks (and one more full copy on a GPU, moved there and back). Now a rank holds its
share once: N / W x D x 4 bytes. Each case runs in a fresh process and reads the kernel's peak RSS (VmHWM).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

SAMPLES, DIM, BATCH, RANKS = 8192, 4096, 256, 2
MIB = 2**20
FULL_MIB = SAMPLES * DIM * 4 / MIB  # 128 MiB
SHARE_MIB = FULL_MIB / RANKS  # 64 MiB


class Tiny(Dataset):
    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 1, 1), float(index)), index % 10


class Wide(nn.Module):
    """A 'trunk' whose pooled output is DIM wide, at almost no compute."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).expand(-1, DIM).contiguous()


def _old_assembly(trunk: nn.Module, dataset: Dataset, rank: int) -> torch.Tensor:
    """What extract_features did before (its all-reduce is a no-op here): chunks, cat, full matrix."""
    positions = list(range(rank, len(dataset), RANKS))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, positions), batch_size=BATCH)
    chunks = [trunk(images).flatten(1).float().cpu() for images, _ in loader]
    features = torch.zeros(len(dataset), chunks[0].shape[1])
    features[torch.tensor(positions)] = torch.cat(chunks)
    return features


def _peak_kib() -> int:
    with open("/proc/self/status") as status_file:
        status = status_file.read()
    return int(status.split("VmHWM:")[1].split()[0])


def _measure(mode: str) -> float:
    """Peak RSS growth (MiB) of one extraction on rank 0 of RANKS, in this process."""
    from trainer.distributed import DistEnv
    from trainer.evaluation.features import extract_features

    torch.set_num_threads(1)
    dataset, trunk, env = Tiny(), Wide(), DistEnv(0, RANKS, 0, torch.device("cpu"))
    trunk(torch.zeros(BATCH, 1, 1, 1))  # warm the allocator and the kernels outside the measurement
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    before = _peak_kib()
    if mode == "old":
        kept = _old_assembly(trunk, dataset, 0)
    else:
        kept = extract_features(trunk, dataset, torch.device("cpu"), BATCH, 0, env)
        assert len(kept) == SAMPLES // RANKS and kept.total == SAMPLES
    return (_peak_kib() - before) / 1024


def _peak_in_fresh_process(mode: str) -> float:
    done = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.slow
def test_a_rank_holds_its_share_once_where_the_old_assembly_held_the_full_matrix_twice() -> None:
    old, new = _peak_in_fresh_process("old"), _peak_in_fresh_process("new")
    print(f"peak host memory per rank, {SAMPLES} x {DIM} float32 on {RANKS} ranks: old {old:.0f} MiB, "
          f"new {new:.0f} MiB (full matrix {FULL_MIB:.0f} MiB, share {SHARE_MIB:.0f} MiB)")
    assert old >= 1.9 * FULL_MIB  # the old code doubled the full matrix ...
    assert new <= 1.25 * SHARE_MIB + 8  # ... the share is held once (+ labels, one batch, the loader)


if __name__ == "__main__":
    print(_measure(sys.argv[1]))
