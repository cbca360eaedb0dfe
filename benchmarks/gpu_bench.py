"""GPU benchmark: ResNet-50 SwAV 2x224 + 6x96 (and + Un-Mix mixtures) at bf16, channels_last.

    python benchmarks/gpu_bench.py            # one GPU, under 8 minutes (--time_budget_s, default 450 s)
    python benchmarks/gpu_bench.py --ddp      # every GPU of this node, DDP + SyncBN, synthetic crops
    python benchmarks/gpu_bench.py --smoke [--ddp]   # tiny CPU run of the same code paths (2 gloo ranks)

Stores the single-GPU images/s (and peak memory) in benchmarks/results/gpu_bench.json under the GPU's kind
(--results), where `unmix-swav plan` reads them as `measured`. Prints images/s and model FLOP utilisation (MFU)
for each case, all through pretrain's own step functions
(augment_on_device, forward_loss) with LARC around SGD:
  synthetic  uint8 crops already on the GPU; photometric ops, mixtures, forward, backward, LARS on the GPU
  loader     generated 500x375 JPEGs decoded and cropped by DataLoader workers (pinned, prefetching)
and the loader alone, and the LARS step before (per-parameter loop, a host sync per parameter) and after
(foreach). MFU counts the matmul/convolution FLOPs of one step (torch.utils.flop_counter, forward and
backward) against the GPU's dense bf16 peak (--peak_tflops for GPUs not in the table). Loader workers
come from the CPUs this process may use (affinity mask and cgroup quota, trainer.run.resources), shared
by the ranks, capped at 16 per rank. Cases that would start after the time budget are skipped (said so).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing import Pool

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
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
from trainer.plan.gpus import kind_of  # noqa: E402
from trainer.plan.throughput import MEASURED_FILE, crop_units  # noqa: E402
from trainer.run.resources import MAX_WORKERS_PER_RANK, available_cpus, size_rank  # noqa: E402
from trainer.seeding import generator  # noqa: E402
from trainer.swav_step import augment_on_device, forward_loss  # noqa: E402

# Dense (not sparse) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, most specific name first;
# a name matches as a whole word of torch.cuda.get_device_name() (so "L4" is not "L40", "H100" not "H100 NVL").
PEAK_BF16_TFLOPS = (("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("GH200", 989.0), ("H200", 989.0),
                    ("H100", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0),
                    ("L4", 121.0), ("A10", 125.0))
SEED = 0
Step = Callable[[list[torch.Tensor], int], torch.Tensor]


def peak_tflops_of(name: str) -> float | None:
    """The dense bf16 peak of a GPU named `name` (as CUDA reports it), or None when not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", name):
            return tflops
    return None


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    tflops = peak_tflops_of(torch.cuda.get_device_name(device))
    return tflops * 1e12 if tflops else None


def default_workers(ranks: int = 1) -> int:
    """Loader workers per rank from the CPUs this process may use (affinity mask, cgroup quota), capped."""
    cpus, _ = available_cpus()
    return size_rank(cpus, ranks, on_gpu=True, requested_workers=MAX_WORKERS_PER_RANK).workers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: SwAVModel, optimizer: LARC, device: torch.device, unmix: bool, compile_model: bool,
              forward_model: torch.nn.Module | None = None) -> Step:
    """pretrain's step without logging: photometric ops on the device, forward_loss, backward, LARS.
    `forward_model` (a DDP wrapper of `model`) is what the crops go through; `model` by default."""
    loss_cfg = argparse.Namespace(crops_for_assign=[0, 1], temperature=0.1, epsilon=0.05, sinkhorn_iterations=3,
                                  run_swav=not unmix, unmix_prob=0.0, unmix_beta=1.0)
    photometric = Photometric()
    forward_model = forward_model if forward_model is not None else model
    forward_model = torch.compile(forward_model) if compile_model else forward_model
    on_gpu = device.type == "cuda"

    def step(uint8_crops: list[torch.Tensor], index: int) -> torch.Tensor:
        rank = dist.get_rank() if dist.is_initialized() else 0
        step_generator = generator(SEED, rank, index)
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


RECIPE_SCALES = dict(nmb_crops=[2, 6], min_scale_crops=[0.14, 0.05], max_scale_crops=[1.0, 0.14])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: resnet_tiny, 2x64 + 6x32, 2 steps")
    parser.add_argument("--ddp", action="store_true", help="one process per GPU of this node (2 gloo ranks with "
                                                           "--smoke), DDP + SyncBN, synthetic crops")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step and GPU (each gives 8 crops)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--images", type=int, default=2048, help="JPEGs for the real-loader cases")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers per rank (default: from the affinity mask / cgroup quota, capped at "
                             f"{MAX_WORKERS_PER_RANK})")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (adds minutes; with "
                                                               "--ddp, BatchNorm per GPU instead of SyncBN)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak, for MFU")
    parser.add_argument("--results", default=str(MEASURED_FILE),
                        help="JSON file the single-GPU images/s are stored in, keyed by GPU kind (unmix-swav plan)")
    parser.add_argument("--time_budget_s", type=float, default=450.0,
                        help="cases that would start after this many seconds are skipped")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.steps, args.warmup, args.images = 4, 2, 1, 16
        args.workers = 1 if args.workers is None else args.workers
    return args


def setting(args: argparse.Namespace, device: torch.device) -> tuple[str, list[int]]:
    """(arch, crop sizes per resolution)."""
    return ("resnet_tiny", [64, 32]) if args.smoke else ("resnet50", [224, 96])


def build(arch: str, device: torch.device) -> tuple[SwAVModel, LARC]:
    torch.manual_seed(SEED)
    trunk, width = build_trunk(arch)
    model = SwAVModel(trunk, SwAVHead(width, 2048, 128, 3000)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, LARC(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-6))


def crop_sizes_of(sizes: list[int]) -> list[int]:
    return [size for count, size in zip(RECIPE_SCALES["nmb_crops"], sizes, strict=True) for _ in range(count)]


def single_gpu(args: argparse.Namespace) -> None:
    started = time.monotonic()
    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    arch, sizes = setting(args, device)
    workers = default_workers() if args.workers is None else args.workers
    torch.backends.cudnn.benchmark = True  # fixed shapes per resolution
    recipe = dict(size_crops=sizes, **RECIPE_SCALES)
    crop_sizes = crop_sizes_of(sizes)
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    print(f"{name}: {arch} SwAV 2x{sizes[0]} + 6x{sizes[1]}, batch {args.batch_size}, "
          f"{'bf16 + channels_last' if device.type == 'cuda' else 'float32'}, "
          f"compile {'on' if args.compile else 'off'}, {args.steps} timed steps after {args.warmup}, "
          f"{workers} loader workers ({available_cpus()[1]}), peak {peak / 1e12 if peak else 'unknown'} TFLOP/s")

    def over_budget(case: str) -> bool:
        spent = time.monotonic() - started
        if spent > args.time_budget_s:
            print(f"  skipped {case}: {spent:.0f} s spent of the {args.time_budget_s:.0f} s budget")
            return True
        return False

    model, optimizer = build(arch, device)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = write_dataset(folder, args.images, max(1, min(workers, 16)))
        needed_images = (args.warmup + args.steps + 1) * args.batch_size
        epochs = -(-needed_images // args.images) + 1
        loader = real_loader(root, args.batch_size, recipe, workers, device, epochs)
        loader_rate = loader_only(loader, args.warmup, args.steps)
        print(f"  loader alone, {workers} workers: {loader_rate:8.1f} images/s "
              f"({loader_rate / max(workers, 1):.1f} per worker)")
        for unmix in (False, True):
            label = "SwAV + Un-Mix" if unmix else "SwAV"
            if over_budget(label):
                continue
            flops = step_flops(make_step(model, optimizer, device, unmix, compile_model=False),
                               next(synthetic_batches(args.batch_size, crop_sizes, device)))
            step = make_step(model, optimizer, device, unmix, args.compile)
            for source in ("synthetic", "loader"):
                if over_budget(f"{label} {source}"):
                    continue
                batches = (synthetic_batches(args.batch_size, crop_sizes, device) if source == "synthetic"
                           else loader_batches(real_loader(root, args.batch_size, recipe, workers, device,
                                                           epochs)))
                seconds = timed_steps(step, batches, args.warmup, args.steps, device)
                batches.close()
                rate = args.steps * args.batch_size / seconds
                results[f"{label} {source}"] = rate
                mfu = f"MFU {flops * args.steps / seconds / peak:6.1%}" if peak else "MFU n/a"
                print(f"  {label:<14} {source:<9} {rate:8.1f} images/s  {mfu}  "
                      f"({flops / args.batch_size / 1e9:.1f} GFLOP per image)")
            if f"{label} loader" in results:
                ratio = results[f"{label} loader"] / results[f"{label} synthetic"]
                print(f"  {label}: real loader / synthetic = {ratio:.2f} (target >= 0.9)")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
        store_result(args.results, torch.cuda.get_device_name(device), args.batch_size, results,
                     torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30)
    photometric = photometric_seconds(args.batch_size, crop_sizes, device, rounds=2 if args.smoke else 20)
    print(f"  photometric ops alone: {photometric * 1e3:.1f} ms per step "
          f"({args.batch_size / photometric:.0f} images/s)")
    seconds = lars_seconds(model, device, rounds=2 if args.smoke else 20)
    for label, value in seconds.items():
        print(f"  LARS step, {label:<40} {value * 1e3:8.2f} ms")
    before, after = seconds.values()
    print(f"  LARS step speed-up {before / after:.1f}x")
    print(f"  total {time.monotonic() - started:.0f} s")


def store_result(path: str, device_name: str, batch_size: int, rates: dict[str, float], peak_allocated_gib: float,
                 peak_reserved_gib: float) -> None:
    """Merge this GPU kind's images/s into `path` (a JSON object keyed by GPU kind): `unmix-swav plan` reads it
    and calls its throughput `measured` (trainer/plan/throughput.py). A GPU not in the planner's table is stored
    under its CUDA name, which the planner never looks up."""
    kind = kind_of(device_name) or device_name
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        stored = {}
    stored[kind] = {"device_name": device_name, "batch_size": batch_size, "images_per_s": rates,
                    "crop_units": crop_units(argparse.Namespace(nmb_crops=RECIPE_SCALES["nmb_crops"],
                                                                size_crops=[224, 96], run_swav=False)),
                    "peak_allocated_gib": round(peak_allocated_gib, 2),
                    "peak_reserved_gib": round(peak_reserved_gib, 2),
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d", time.gmtime())}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(stored, handle, indent=2, sort_keys=True)
    os.replace(temporary, path)
    print(f"  stored in {path} under {kind!r} (unmix-swav plan reads it)")


def ddp_rank(rank: int, world: int, args: argparse.Namespace, init_file: str) -> None:
    """One rank of the --ddp case: DDP (+ SyncBN across the node on GPUs), synthetic crops, both variants."""
    device = torch.device("cpu") if args.smoke else torch.device("cuda", rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world)
    arch, sizes = setting(args, device)
    torch.backends.cudnn.benchmark = True
    model, optimizer = build(arch, device)
    syncbn = device.type == "cuda" and not args.compile  # compiled SyncBN is refused by pretrain, see README
    if syncbn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = LARC(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-6))
    wrapped = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    crop_sizes = crop_sizes_of(sizes)
    peak = peak_flops(device, args.peak_tflops)
    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
        print(f"{world} x {name}: {arch} SwAV 2x{sizes[0]} + 6x{sizes[1]}, batch {args.batch_size} per rank, DDP"
              f"{' + SyncBN' if syncbn else ''}, compile {'on' if args.compile else 'off'}, synthetic crops")
    for unmix in (False, True):
        label = "SwAV + Un-Mix" if unmix else "SwAV"
        flops = step_flops(make_step(model, optimizer, device, unmix, False, wrapped),
                           next(synthetic_batches(args.batch_size, crop_sizes, device)))
        step = make_step(model, optimizer, device, unmix, args.compile, wrapped)
        batches = synthetic_batches(args.batch_size, crop_sizes, device)
        seconds = torch.tensor([timed_steps(step, batches, args.warmup, args.steps, device)], device=device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        if rank == 0:
            elapsed = float(seconds)
            rate = args.steps * args.batch_size / elapsed
            mfu = f"MFU {flops * args.steps / elapsed / peak:6.1%} per GPU" if peak else "MFU n/a"
            print(f"  {label:<14} {rate * world:9.1f} images/s on {world} ranks ({rate:.1f} per rank)  {mfu}")
    if rank == 0 and device.type == "cuda":
        print(f"  peak GPU memory on rank 0 {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    dist.destroy_process_group()


def node_ddp(args: argparse.Namespace) -> None:
    world = 2 if args.smoke else torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(ddp_rank, args=(world, args, os.path.join(folder, "init")), nprocs=world, join=True)


def main() -> None:
    args = parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no GPU: run with --smoke for a CPU check of the code paths")
    node_ddp(args) if args.ddp else single_gpu(args)


if __name__ == "__main__":
    main()
