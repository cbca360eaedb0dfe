"""One-GPU benchmark: ResNet-50 SwAV 2x224 + 6x96 (and + Un-Mix mixtures) at bf16, channels_last.

    python benchmarks/gpu_bench.py            # a few minutes on one H100 / H200 (under 8 with --compile)
    python benchmarks/gpu_bench.py --smoke    # tiny CPU run of the same code paths

Prints images/s and model FLOP utilisation (MFU) for each case, all through pretrain's own step functions
(augment_on_device, forward_loss) with LARC around SGD:
  synthetic  uint8 crops already on the GPU; photometric ops, mixtures, forward, backward, LARS on the GPU
  loader     generated 500x375 JPEGs decoded and cropped by DataLoader workers (pinned, prefetching)
and the loader alone, and the LARS step before (per-parameter loop, a host sync per parameter) and after
(foreach). MFU counts the matmul/convolution FLOPs of one step (torch.utils.flop_counter, forward and
backward) against the GPU's dense bf16 peak (--peak_tflops for GPUs not in the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing import Pool

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loader import write_jpegs  # noqa: E402
from bench_train import LoopLARC  # noqa: E402

from trainer.data.multicrop import MultiCropDataset, crop_specs  # noqa: E402
from trainer.data.photometric import Photometric  # noqa: E402
from trainer.data.sources import open_source  # noqa: E402
from trainer.models.heads import SwAVHead, SwAVModel  # noqa: E402
from trainer.models.resnet import build_trunk  # noqa: E402
from trainer.optim import LARC  # noqa: E402
from trainer.pretrain import augment_on_device, forward_loss  # noqa: E402
from trainer.seeding import generator  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s), checked in this order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("A10", 125.0), ("L4", 121.0))
SEED = 0
Step = Callable[[list[torch.Tensor], int], torch.Tensor]


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: SwAVModel, optimizer: LARC, device: torch.device, unmix: bool, compile_model: bool
              ) -> Step:
    """pretrain's step without logging: photometric ops on the device, forward_loss, backward, LARS."""
    loss_cfg = argparse.Namespace(crops_for_assign=[0, 1], temperature=0.1, epsilon=0.05, sinkhorn_iterations=3,
                                  run_swav=not unmix, unmix_prob=0.0, unmix_beta=1.0)
    photometric = Photometric()
    forward_model = torch.compile(model) if compile_model else model
    on_gpu = device.type == "cuda"

    def step(uint8_crops: list[torch.Tensor], index: int) -> torch.Tensor:
        step_generator = generator(SEED, 0, index)
        crops = [crop.to(device, non_blocking=True) for crop in uint8_crops]
        crops = augment_on_device(crops, photometric, step_generator)
        if on_gpu:
            crops = [crop.contiguous(memory_format=torch.channels_last) for crop in crops]
        model.head.normalize_prototypes()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            loss, _, _ = forward_loss(forward_model, crops, loss_cfg, None, step_generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def step_flops(step: Step, crops: list[torch.Tensor]) -> float:
    """Matmul/convolution FLOPs of one training step (forward + backward)."""
    with FlopCounterMode(display=False) as counter:
        step(crops, 0)
    return float(counter.get_total_flops())


def timed_steps(step: Step, batches: Iterator[list[torch.Tensor]], warmup: int, steps: int,
                device: torch.device) -> float:
    """Seconds for `steps` steps after `warmup` steps; the only host syncs are at the two ends."""
    for index in range(warmup):
        step(next(batches), index)
    synchronize(device)
    start = time.perf_counter()
    for index in range(warmup, warmup + steps):
        loss = step(next(batches), index)
    synchronize(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"the loss became {loss.item()} during the benchmark")
    return elapsed


def synthetic_batches(batch: int, sizes: list[int], device: torch.device) -> Iterator[list[torch.Tensor]]:
    crops = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device) for size in sizes]
    while True:
        yield crops


def write_dataset(folder: str, count: int, processes: int) -> str:
    chunk = -(-count // processes)
    with Pool(processes) as pool:
        pool.starmap(write_jpegs, [(folder, min(chunk, count - first), (500, 375), SEED, first)
                                   for first in range(0, count, chunk)])
    return folder


def real_loader(root: str, batch: int, recipe: dict, workers: int, device: torch.device, epochs: int
                ) -> DataLoader:
    source = open_source(root)
    specs = crop_specs(**recipe)
    dataset = MultiCropDataset(source, specs, SEED, rank=0, device_photometric=True)
    rng = np.random.default_rng(SEED)
    keys = [(epoch, int(i)) for epoch in range(epochs) for i in rng.permutation(len(source))]
    return DataLoader(dataset, batch_size=batch, sampler=keys, num_workers=workers, drop_last=True,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def loader_batches(loader: DataLoader) -> Iterator[list[torch.Tensor]]:
    """The crops of each batch (the dataset also returns how many bad files it skipped: none here)."""
    for crops, _ in loader:
        yield crops


def loader_only(loader: DataLoader, warmup: int, steps: int) -> float:
    batches = loader_batches(loader)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    rate = steps * loader.batch_size / (time.perf_counter() - start)
    batches.close()  # stops the workers before the next case starts its own
    return rate


def photometric_seconds(batch: int, crop_sizes: list[int], device: torch.device, rounds: int) -> float:
    """Seconds per step of the device-side photometric ops alone (their share of the step)."""
    crops = next(synthetic_batches(batch, crop_sizes, device))
    photometric = Photometric()
    augment_on_device(crops, photometric, generator(SEED, 0, 0))
    synchronize(device)
    start = time.perf_counter()
    for index in range(rounds):
        augment_on_device(crops, photometric, generator(SEED, 0, index))
    synchronize(device)
    return (time.perf_counter() - start) / rounds


def lars_seconds(model: SwAVModel, device: torch.device, rounds: int) -> dict[str, float]:
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    variants = {"seed: per-parameter LARC + SGD loop": LoopLARC(torch.optim.SGD(
                    model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-6, foreach=False)),
                "now:  foreach LARC + SGD default": LARC(torch.optim.SGD(
                    model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-6))}
    seconds = {}
    for name, optimizer in variants.items():
        optimizer.step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(rounds):
            optimizer.step()
        synchronize(device)
        seconds[name] = (time.perf_counter() - start) / rounds
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: resnet_tiny, 2x64 + 6x32, 2 steps")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step (each gives 8 crops)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--images", type=int, default=2048, help="JPEGs for the real-loader cases")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (adds minutes)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak, for MFU")
    args = parser.parse_args()

    arch, sizes = "resnet50", [224, 96]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        arch, sizes, device = "resnet_tiny", [64, 32], torch.device("cpu")
        args.batch_size, args.steps, args.warmup, args.images, args.workers = 4, 2, 1, 16, 1
    elif device.type != "cuda":
        raise SystemExit("no GPU: run with --smoke for a CPU check of the code paths")
    torch.backends.cudnn.benchmark = True  # fixed shapes per resolution
    recipe = dict(nmb_crops=[2, 6], size_crops=sizes, min_scale_crops=[0.14, 0.05], max_scale_crops=[1.0, 0.14])
    crop_sizes = [size for count, size in zip(recipe["nmb_crops"], sizes, strict=True) for _ in range(count)]
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    print(f"{name}: {arch} SwAV 2x{sizes[0]} + 6x{sizes[1]}, batch {args.batch_size}, "
          f"{'bf16 + channels_last' if device.type == 'cuda' else 'float32'}, "
          f"compile {'on' if args.compile else 'off'}, {args.steps} timed steps after {args.warmup}")

    torch.manual_seed(SEED)
    trunk, width = build_trunk(arch)
    model = SwAVModel(trunk, SwAVHead(width, 2048, 128, 3000)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = LARC(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-6))

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = write_dataset(folder, args.images, max(1, min(args.workers, 16)))
        needed_images = (args.warmup + args.steps + 1) * args.batch_size
        epochs = -(-needed_images // args.images) + 1
        loader = real_loader(root, args.batch_size, recipe, args.workers, device, epochs)
        loader_rate = loader_only(loader, args.warmup, args.steps)
        print(f"  loader alone, {args.workers} workers: {loader_rate:8.1f} images/s "
              f"({loader_rate / args.workers:.1f} per worker)")
        for unmix in (False, True):
            label = "SwAV + Un-Mix" if unmix else "SwAV"
            flops = step_flops(make_step(model, optimizer, device, unmix, compile_model=False),
                               next(synthetic_batches(args.batch_size, crop_sizes, device)))
            step = make_step(model, optimizer, device, unmix, args.compile)
            for source in ("synthetic", "loader"):
                batches = (synthetic_batches(args.batch_size, crop_sizes, device) if source == "synthetic"
                           else loader_batches(real_loader(root, args.batch_size, recipe, args.workers, device,
                                                           epochs)))
                seconds = timed_steps(step, batches, args.warmup, args.steps, device)
                batches.close()
                rate = args.steps * args.batch_size / seconds
                results[f"{label} {source}"] = rate
                mfu = f"MFU {flops * args.steps / seconds / peak:6.1%}" if peak else "MFU n/a"
                print(f"  {label:<14} {source:<9} {rate:8.1f} images/s  {mfu}  "
                      f"({flops / args.batch_size / 1e9:.1f} GFLOP per image)")
            ratio = results[f"{label} loader"] / results[f"{label} synthetic"]
            print(f"  {label}: real loader / synthetic = {ratio:.2f} (target >= 0.9)")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    photometric = photometric_seconds(args.batch_size, crop_sizes, device, rounds=2 if args.smoke else 20)
    print(f"  photometric ops alone: {photometric * 1e3:.1f} ms per step "
          f"({args.batch_size / photometric:.0f} images/s)")
    seconds = lars_seconds(model, device, rounds=2 if args.smoke else 20)
    for label, value in seconds.items():
        print(f"  LARS step, {label:<40} {value * 1e3:8.2f} ms")
    before, after = seconds.values()
    print(f"  LARS step speed-up {before / after:.1f}x")


if __name__ == "__main__":
    main()
