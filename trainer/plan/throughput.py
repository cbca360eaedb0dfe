"""Images/s per GPU, time, GPU-hours and cost, checkpoint interval and the dataset's traffic for a planned run.

Images/s per GPU is `measured` when `make gpu-bench` stored a result for the GPU kind (MEASURED_FILE, written by
benchmarks/gpu_bench.py), else `estimated`: the GPU's published ResNet-50 AMP training figure (trainer/plan/
gpus.py, one 224 px crop an image) divided by the step's cost in 224 px crops of a ResNet-50: every crop and every
Un-Mix mixture (the first crop of each pair, mixed, goes through forward and backward too) counts (size / 224)^2,
times the trunk's FLOPs against a ResNet-50's (counted on the meta device). 2x224 + 6x96 is 3.10 crops, 4.65 with
Un-Mix's 1x224 + 3x96 mixtures. Sinkhorn, the head and the photometric ops are left out (a few %).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.plan.gpus import DEFAULT_NODE_SCALING, Gpu

MEASURED_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu_bench.json"
INTER_NODE_PER_DOUBLING = 0.95  # assumption: each doubling of nodes keeps 95% (DDP overlaps its all-reduce)
FP32_SLOWDOWN = 2.63  # NVIDIA's A100 TF32 -> AMP speed-up for ResNet-50 (same table as the images/s)
CHECKPOINT_WRITE_MB_S = 200.0  # assumption: one stream from one pod to S3 or a network volume
REFERENCE_CROP = 224


def crop_units(cfg: argparse.Namespace) -> float:
    """The step's cost in 224 px crops: originals plus Un-Mix's mixtures (one per pair of crops)."""
    units = 0.0
    for count, size in zip(cfg.nmb_crops, cfg.size_crops, strict=True):
        forwards = count if cfg.run_swav else count + count // 2
        units += forwards * (size / REFERENCE_CROP) ** 2
    return units


_ARCH_RATIO: dict[str, float] = {"resnet50": 1.0}


def arch_ratio(arch: str) -> float:
    """The trunk's training FLOPs at 224 px against a ResNet-50's (counted on the meta device, cached)."""
    if arch not in _ARCH_RATIO:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from trainer.models.resnet import build_trunk

        def flops(name: str) -> float:
            trunk, _ = build_trunk(name)
            trunk.to("meta")
            with FlopCounterMode(display=False) as counter:
                trunk(torch.zeros(1, 3, REFERENCE_CROP, REFERENCE_CROP, device="meta"))
            return float(counter.get_total_flops())

        _ARCH_RATIO[arch] = flops(arch) / flops("resnet50")
    return _ARCH_RATIO[arch]


def read_measured(path: str | os.PathLike | None, kind: str) -> dict[str, Any] | None:
    """The stored gpu-bench result for GPU `kind`, or None (no file, no entry, or a file that does not parse)."""
    if path is None or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, ValueError):
        return None
    entry = results.get(kind) if isinstance(results, dict) else None
    return entry if isinstance(entry, dict) and isinstance(entry.get("images_per_s"), dict) else None


@dataclass(frozen=True)
class Throughput:
    images_per_s_per_gpu: float
    source: str  # "measured" or "estimated"
    detail: str  # where the figure comes from
    scaling_efficiency: float
    scaling_note: str

    def to_json(self) -> dict:
        return {"images_per_s_per_gpu": round(self.images_per_s_per_gpu, 1), "source": self.source,
                "detail": self.detail, "scaling_efficiency": round(self.scaling_efficiency, 3),
                "scaling_note": self.scaling_note}


def per_gpu(cfg: argparse.Namespace, gpu: Gpu, images_per_s_override: float | None, measured: dict | None
            ) -> tuple[float, str, str]:
    units = crop_units(cfg) * arch_ratio(cfg.arch)
    if images_per_s_override:
        return (images_per_s_override / units, "estimated",
                f"--gpu_images_per_s {images_per_s_override:g} (ResNet-50, 224 px) / {units:.2f} crop units")
    if measured is not None:
        case = f"{'SwAV' if cfg.run_swav else 'SwAV + Un-Mix'} loader"
        rates = measured["images_per_s"]
        rate = rates.get(case) or rates.get(case.replace("loader", "synthetic"))
        if rate:
            bench_units = float(measured.get("crop_units") or (3.10 if cfg.run_swav else 4.65))
            scale = bench_units / units
            return (rate * scale, "measured",
                    f"make gpu-bench on {measured.get('device_name', gpu.name)}: {rate:.0f} images/s ({case}, "
                    f"ResNet-50 2x224 + 6x96, batch {measured.get('batch_size', '?')})"
                    + ("" if abs(scale - 1) < 1e-6 else f" x {scale:.2f} for this run's crops and trunk"))
    rate = gpu.images_per_s / units
    detail = f"{gpu.images_per_s:.0f} images/s ({gpu.source}) / {units:.2f} crop units"
    if not cfg.use_fp16:
        rate /= FP32_SLOWDOWN
        detail += f" / {FP32_SLOWDOWN} (no mixed precision)"
    return rate, "estimated", detail


def scaling(gpu: Gpu, num_nodes: int, gpus_per_node: int) -> tuple[float, str]:
    node = gpu.node_scaling or DEFAULT_NODE_SCALING
    within = 1 - (1 - node) * (gpus_per_node - 1) / 7 if gpus_per_node > 1 else 1.0
    across = INTER_NODE_PER_DOUBLING ** math.log2(num_nodes)
    source = ("NVIDIA's published 8-GPU strong scaling" if gpu.node_scaling
              else "assumed (NVIDIA's A100 0.84, V100 0.87)")
    note = (f"{within:.2f} within a node ({node:.2f} at 8 GPUs: {source}, linear in the GPU count) x {across:.2f} "
            f"across {num_nodes} node(s) (assumed {INTER_NODE_PER_DOUBLING} per doubling of nodes)")
    return within * across, note


def throughput(cfg: argparse.Namespace, gpu: Gpu, num_nodes: int, gpus_per_node: int,
               images_per_s_override: float | None, measured: dict | None) -> Throughput:
    rate, source, detail = per_gpu(cfg, gpu, images_per_s_override, measured)
    efficiency, note = scaling(gpu, num_nodes, gpus_per_node)
    return Throughput(rate, source, detail, efficiency, note)


@dataclass(frozen=True)
class RunTime:
    hours_per_epoch: float
    hours: float
    gpu_hours: float
    cost: float | None
    step_s: float

    def to_json(self) -> dict:
        return {"hours_per_epoch": round(self.hours_per_epoch, 3), "hours": round(self.hours, 3),
                "gpu_hours": round(self.gpu_hours, 2), "cost": None if self.cost is None else round(self.cost, 2),
                "step_s": round(self.step_s, 4)}


def run_time(speed: Throughput, gpus: int, num_images: int, epochs: int, global_batch: int,
             price_per_gpu_hour: float | None) -> RunTime:
    images_per_s = speed.images_per_s_per_gpu * gpus * speed.scaling_efficiency
    epoch_hours = num_images / images_per_s / 3600
    hours = epoch_hours * epochs
    gpu_hours = hours * gpus
    cost = None if price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour
    return RunTime(epoch_hours, hours, gpu_hours, cost, global_batch / images_per_s)


def checkpoint_plan(parameters: int, cfg: argparse.Namespace, step_s: float, steps_per_epoch: int,
                    preemptions_per_node_day: float, num_nodes: int) -> dict[str, Any]:
    """Size, write time and the interval that minimises lost + writing time (Young: sqrt(2 x write x MTBF))."""
    queue_bytes = cfg.queue_length * len(cfg.crops_for_assign) * cfg.feat_dim * 4
    size = 8 * parameters + queue_bytes  # float32 weights + SGD momentum (+ the queue)
    write_s = size / 1e6 / CHECKPOINT_WRITE_MB_S
    out: dict[str, Any] = {"size_gb": round(size / 1e9, 3), "write_s": round(write_s, 2),
                           "preemptions_per_node_day": preemptions_per_node_day}
    if preemptions_per_node_day <= 0:
        return {**out, "interval_s": None, "every_steps": 0, "rule": "no preemptions expected: once an epoch"}
    mtbf_s = 86400 / (preemptions_per_node_day * num_nodes)  # any node's preemption stops the job
    interval_s = math.sqrt(2 * write_s * mtbf_s)
    steps = max(1, round(interval_s / step_s))
    every = 0 if steps >= steps_per_epoch else steps
    rule = (f"Young's interval sqrt(2 x {write_s:.1f} s write x {mtbf_s / 3600:.1f} h between preemptions) = "
            f"{interval_s / 60:.1f} min = {steps} steps"
            + ("; at least an epoch, so once an epoch" if not every else "")
            + f"; about {interval_s / 2 / 60:.1f} min of work lost a preemption")
    return {**out, "interval_s": round(interval_s), "every_steps": every, "rule": rule}


def data_traffic(dataset: dict[str, Any], run: RunTime, num_nodes: int, gpus_per_node: int,
                 shards_ahead: int = 2) -> dict[str, Any]:
    """Bytes, shards, the shard cache per node and the GET rate on S3 (trainer/data/streaming.py's read path)."""
    from trainer.data.streaming import fetch_requests

    shard_bytes = dataset["bytes"] / max(dataset["shards"], 1)
    gets_per_shard = fetch_requests(int(shard_bytes))
    epoch_s = run.hours_per_epoch * 3600
    return {"bytes_gb": round(dataset["bytes"] / 1e9, 1), "shards": dataset["shards"],
            "shard_mb": round(shard_bytes / 1e6, 1),
            "cache_per_node_gb": round(gpus_per_node * (1 + shards_ahead + 1) * shard_bytes / 1e9, 1),
            "gets_per_s": round(dataset["shards"] * gets_per_shard / epoch_s, 1),
            "read_mb_per_s_per_node": round(dataset["bytes"] / 1e6 / epoch_s / num_nodes, 1)}
