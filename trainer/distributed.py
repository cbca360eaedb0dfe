"""Distributed set-up driven only by the environment that torchrun and the Training Operator inject.

No RANK/WORLD_SIZE in the environment: one process, no launcher. Otherwise init_process_group with
env:// (MASTER_ADDR, MASTER_PORT), nccl on GPUs and gloo on CPUs, and a collective timeout so that a
dead rank makes the others fail instead of hanging forever.

How a dead or stalled peer ends a rank (the exit-code contract, README "Exit codes"):
- gloo: the collective raises (connection closed, or the timeout) in the training thread; the error
  boundary maps it to 138.
- nccl: torch's watchdog thread notices the failed or timed-out collective. Under torch's default
  TORCH_NCCL_ASYNC_ERROR_HANDLING=3 (or 1) it rethrows in that thread, which std::terminate()s the process:
  SIGABRT, exit 134: retried (both job backends retry 128-255), but with no line saying which collective
  failed, and no checkpoint of the step's own state. We set 2 (CleanUpOnly) unless the environment says
  otherwise: the watchdog aborts the communicators and leaves the process alive, and the training thread's
  next collective raises DistBackendError (a torch.distributed.DistError), which the boundary reports in one
  line and maps to 138. TORCH_NCCL_BLOCKING_WAIT stays off: it would make every collective's wait block the
  host. What remains is torch's heartbeat monitor, which still aborts (134, retried too) a process whose
  watchdog is itself stuck (TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC, default 480 s).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer import env
from trainer.errors import UserError

log = logging.getLogger(__name__)
# NCCL settings applied unless the environment already sets them (see the module docstring).
NCCL_ERROR_HANDLING = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """`auto` picks this rank's GPU when there is one, else the CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {preference!r} is not known; use auto, cpu or cuda")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str = "auto", timeout_minutes: float | None = None) -> DistEnv:
    """Initialise from RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT if they are set."""
    settings = env.current()
    world_size, rank, local_rank = settings.world_size, settings.rank, settings.local_rank
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if timeout_minutes is None:
            timeout_minutes = settings.collective_timeout_min
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
            for name, value in NCCL_ERROR_HANDLING.items():
                os.environ.setdefault(name, value)  # read when the NCCL process group is created
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        log.info("rank %d/%d initialised (%s, local rank %d)", rank, world_size, backend, local_rank)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` across ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of `tensor` across ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """`values` summed across ranks, read on the host: one small all-reduce (pretraining's log-step flags)."""
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, on every rank (a one-element list in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (same shape on all ranks) stacked along dim 0, in rank order; itself alone in a
    single process. One collective, device tensors under nccl; gloo has no all_gather_into_tensor."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    size = dist.get_world_size()
    if dist.get_backend() == "nccl":
        out = tensor.new_empty((size * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_into_tensor(out, tensor.contiguous())
        return out
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def syncbn_group(group_size: int, env: DistEnv) -> tuple[dist.ProcessGroup | None, str]:
    """The process group SyncBatchNorm statistics are shared in, for --syncbn_process_group_size, and a
    sentence for the log. Every rank must call this (new_subgroups is a collective set-up).

    Groups are consecutive ranks: torchrun and the Training Operator number ranks node by node, so a size of
    the GPUs per node (the recipe's 8) keeps every group on one node. 0, or a size of at least the world
    size: all ranks (None, the default group). 1: no group; BatchNorm stays per process.
    """
    if group_size == 1:
        return None, "BatchNorm per process (--syncbn_process_group_size 1)"
    if group_size == 0 or group_size >= env.world_size:
        return None, f"SyncBatchNorm across all {env.world_size} processes"
    if env.world_size % group_size:
        raise UserError(f"--syncbn_process_group_size {group_size} does not divide the {env.world_size} "
                        f"processes into equal groups; use a divisor of {env.world_size} (the GPUs per node, "
                        "e.g. 8), or 0 for all processes")
    group, _ = dist.new_subgroups(group_size)
    first = env.rank // group_size * group_size
    return group, (f"SyncBatchNorm in {env.world_size // group_size} groups of {group_size} processes "
                   f"(this rank: {first}-{first + group_size - 1})")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
