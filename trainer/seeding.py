"""Seeds derived from tuples of integers, so that every random draw can be reproduced exactly."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, index, rank, ...); different tuples give unrelated seeds."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from `parts`."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def rng_state() -> dict[str, torch.Tensor]:
    """This process's global torch (and CUDA) generator states, for a checkpoint that resumes exactly."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state
