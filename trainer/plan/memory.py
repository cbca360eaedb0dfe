"""Memory per GPU of one pretraining step: pretrain's own step, run on the `meta` device, counted tensor by tensor.

`simulate` builds the training state and runs two real `train_step`s (Un-Mix, queue, LARS and all) on the meta
device, where tensors have shapes but no data, while a dispatch mode adds up the bytes of every live tensor
storage (a storage is counted once, however many views share it, and subtracted when it is freed): its peak is
what torch.cuda.max_memory_allocated() would report for the same step in float32. Two batch sizes give the
line peak(b) = fixed + per_image x b through the planned batch and twice it (every activation has the batch as its
first dimension; near the planned batch the activations set the peak). The GPU figure then adds what the meta
device cannot see:
- mixed precision: autocast keeps the saved activations in bf16/fp16; AMP_ACTIVATION_FACTOR of the float32
  activations (measured on the CPU with torch.autocast, tests/trainer/plan/test_memory.py) plus the
  half-precision copies of the weights autocast caches (2 bytes a parameter);
- DDP's gradient buckets (one more float32 copy of the gradients) when there is more than one process;
- the caching allocator's blocks (reserved / allocated, ALLOCATOR_FACTOR) and the CUDA context, cuDNN/cuBLAS
  workspaces and NCCL buffers outside torch's allocator (CUDA_OVERHEAD_GIB): assumptions until a GPU run
  records max_memory_reserved (benchmarks/gpu_bench.py stores it beside images/s).
The simulation equals the real CPU step's live tensor bytes (tests/trainer/plan/test_memory.py); against the peak
RSS of real CPU steps it is calibrated by HOST_RSS_FACTOR (tests/trainer/plan/test_memory_calibration.py).
"""

from __future__ import annotations

import argparse
import copy
import math
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 2**30
AMP_ACTIVATION_FACTOR = 0.55  # see the module docstring; measured value in docs/planning.md
ALLOCATOR_FACTOR = 1.10
CUDA_OVERHEAD_GIB = 1.5
MODEL_ERROR = 0.15  # the GPU figure's stated error: AMP_ACTIVATION_FACTOR measured 0.49-0.57 (docs/planning.md)
# On the CPU a step's peak RSS growth is HOST_RSS_FACTOR x the simulated tensor bytes, within HOST_RSS_ERROR
# (oneDNN's blocked-layout copies of activations and weights, malloc's arenas; measured 1.41-1.68x on ResNet-18 at
# 64/32 and 96 px, tests/trainer/plan/test_memory_calibration.py; the tiny ResNet's fixed costs dominate: 1.9-4.0x
# from run to run, so it is not a calibration point). CUDA's counterpart is ALLOCATOR_FACTOR.
HOST_RSS_FACTOR = 1.6
HOST_RSS_ERROR = 0.2
WARN_FRACTION = 0.85


class LiveBytes(TorchDispatchMode):
    """The bytes of live tensor storages on `device_type` created inside the mode, and their peak."""

    def __init__(self, device_type: str = "meta") -> None:
        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != self.device_type:
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self._seen:
                continue
            size = storage.nbytes()
            self._seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out


@dataclass(frozen=True)
class StepMemory:
    """float32 bytes of one step: `persistent` (weights, momentum, gradients, queue) + `per_image` x batch + the
    rest of `fixed` at the peak."""

    parameters: int
    persistent: int
    fixed: int
    per_image: int

    def peak(self, batch: int) -> int:
        return self.fixed + self.per_image * batch


def step_settings(cfg: argparse.Namespace) -> tuple:
    """What a step's memory depends on (the cache key of `simulate`)."""
    return (cfg.arch, tuple(cfg.nmb_crops), tuple(cfg.size_crops), cfg.hidden_mlp, cfg.feat_dim, cfg.nmb_prototypes,
            tuple(cfg.crops_for_assign), cfg.run_swav, cfg.optimizer, cfg.aug_backend, cfg.queue_length)


def measure_steps(cfg: argparse.Namespace, batches: tuple[int, ...], world_size: int, device: torch.device,
                  amp_dtype: torch.dtype | None = None) -> tuple[int, int, int, list[int]]:
    """(parameter count, bytes live once the state is built, bytes live between steps, the peak bytes of a step
    at each of `batches`) of pretrain's train_step, after one step that creates the momentum and the gradients
    (its own peak is the first of the list)."""
    from trainer import swav_step
    from trainer.data.photometric import Photometric
    from trainer.distributed import DistEnv

    cfg = copy.copy(cfg)
    cfg.device, cfg.channels_last, cfg.compile = device.type, False, False
    env = DistEnv(0, world_size, 0, device)
    peaks = []
    with LiveBytes(device.type) as counter:
        state = swav_step.build_state(cfg, env, swav_step.Schedule(iters_per_epoch=10, total_steps=100))
        if state.queue is not None:
            state.queue.filled = state.queue.embeddings.shape[1]  # a full queue: its scores join Sinkhorn
        photometric = Photometric(blur_prob=cfg.blur_prob) if cfg.aug_backend == "device" else None
        epoch = cfg.epoch_queue_starts if state.queue is not None else 0
        built = before = counter.live
        for batch in (batches[0], *batches):
            cfg.batch_size = batch
            ctx = swav_step.StepContext(cfg, env, state.model, photometric, amp_dtype)
            crops = [torch.zeros(batch, 3, size, size, dtype=torch.uint8, device=device)
                     for count, size in zip(cfg.nmb_crops, cfg.size_crops, strict=True) for _ in range(count)]
            before = counter.live
            counter.peak = before
            swav_step.train_step(state, ctx, crops, epoch)
            peaks.append(counter.peak)
            del crops, ctx
    parameters = sum(p.numel() for p in state.model.parameters())
    return parameters, built, before, peaks


_SIMULATED: dict[tuple, StepMemory] = {}


def simulate(cfg: argparse.Namespace, world_size: int, batch: int | None = None) -> StepMemory:
    """The float32 memory line of `cfg`'s step through per-GPU `batch` and twice it (cached; seconds for a ResNet-50:
    on the meta device a step takes as long at any batch). Both points sit at the batch planned, because at small
    batches a fixed transient (Sinkhorn over the queue, the optimizer's temporaries) can set the peak instead."""
    batch = batch or cfg.batch_size
    key = (step_settings(cfg), world_size, batch)
    if key not in _SIMULATED:
        parameters, _, persistent, (_, peak, peak_twice) = measure_steps(cfg, (batch, 2 * batch), world_size,
                                                                         torch.device("meta"))
        per_image = (peak_twice - peak) // batch
        _SIMULATED[key] = StepMemory(parameters, persistent, peak - per_image * batch, per_image)
    return _SIMULATED[key]


@dataclass(frozen=True)
class MemoryPlan:
    gib_per_gpu: float
    gpu_gib: float
    fits: bool
    fraction: float
    largest_batch: int  # the largest per-GPU batch that fits (0: none)
    parts: dict[str, float]  # GiB by part, for the table
    error: float  # the model's relative error (MODEL_ERROR)

    def to_json(self) -> dict:
        return {"gib_per_gpu": round(self.gib_per_gpu, 2), "gpu_gib": self.gpu_gib, "fits": self.fits,
                "fraction": round(self.fraction, 3), "largest_batch_per_gpu": self.largest_batch,
                "parts_gib": {k: round(v, 2) for k, v in self.parts.items()}, "model_error": self.error}


def gpu_bytes(step: StepMemory, batch: int, mixed_precision: bool, world_size: int) -> dict[str, float]:
    """GiB by part of one GPU's peak at per-GPU `batch` (see the module docstring)."""
    activations = step.peak(batch) - step.persistent
    parts = {"weights, gradients, momentum, queue": step.persistent / GIB,
             "activations": activations * (AMP_ACTIVATION_FACTOR if mixed_precision else 1.0) / GIB}
    if mixed_precision:
        parts["half-precision weight copies"] = 2 * step.parameters / GIB
    if world_size > 1:
        parts["DDP gradient buckets"] = 4 * step.parameters / GIB
    allocated = sum(parts.values())
    parts["allocator blocks"] = allocated * (ALLOCATOR_FACTOR - 1)
    parts["CUDA context, workspaces, NCCL"] = CUDA_OVERHEAD_GIB
    return parts


def plan_memory(step: StepMemory, batch: int, mixed_precision: bool, world_size: int, gpu_gib: float
                ) -> MemoryPlan:
    def total_at(size: int) -> float:
        return sum(gpu_bytes(step, size, mixed_precision, world_size).values())

    parts = gpu_bytes(step, batch, mixed_precision, world_size)
    total = sum(parts.values())
    per_image = total_at(batch + 1) - total
    largest = max(math.floor(batch + (gpu_gib - total) / per_image), 0)
    while total_at(largest + 1) <= gpu_gib:  # the affine estimate, corrected for rounding
        largest += 1
    while largest and total_at(largest) > gpu_gib:
        largest -= 1
    return MemoryPlan(total, gpu_gib, total <= gpu_gib, total / gpu_gib, largest, parts, MODEL_ERROR)
