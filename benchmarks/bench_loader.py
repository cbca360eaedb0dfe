"""Loader throughput per CPU core: the split path (uint8 decode + geometric crops in the workers, photometric
ops batched on the device) against the seed's per-image PIL path, on the same JPEGs and multi-crop recipe.

    python benchmarks/bench_loader.py [--images 48] [--rounds 3]

Everything runs in this one process on one thread, so images/s here is images/s per loader core. Each
measurement is repeated `--rounds` times, interleaved, and the best round is kept (other processes share
the cores). Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from trainer.data.multicrop import GeometricMultiCrop, MultiCropDataset, crop_specs
from trainer.data.photometric import Photometric
from trainer.data.sources import open_source

RECIPE = dict(nmb_crops=[2, 6], size_crops=[224, 96], min_scale_crops=[0.14, 0.05], max_scale_crops=[1.0, 0.14])


def write_jpegs(folder: str, count: int, size: tuple[int, int] = (500, 375), seed: int = 0, first: int = 0) -> str:
    """`count` photo-like JPEGs (smooth colour field + texture noise, quality 90: about 100 KB, ImageNet's
    bytes per pixel) numbered from `first` under folder/images/, a one-class ImageFolder. Returns the root."""
    rng = np.random.default_rng([seed, first])
    class_dir = os.path.join(folder, "images")
    os.makedirs(class_dir, exist_ok=True)
    width, height = size
    for i in range(first, first + count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 20, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(os.path.join(class_dir, f"{i:05d}.jpg"), quality=90)
    return folder


def best_rate(count: int, run: Callable[[], None], rounds: list[float]) -> None:
    """Time one round of `run` (processing `count` images) and keep its images/s."""
    start = time.perf_counter()
    run()
    rounds.append(count / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="JPEGs to generate and read per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best is kept")
    parser.add_argument("--batch", type=int, default=16, help="images per batched photometric call")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as folder:
        source = open_source(write_jpegs(folder, args.images))
        specs = crop_specs(**RECIPE)
        split = MultiCropDataset(source, specs, seed=0, rank=0, device_photometric=True)
        no_draft = MultiCropDataset(source, specs, seed=0, rank=0, device_photometric=True)
        no_draft.geometric = GeometricMultiCrop(specs, use_draft=False)
        seed_style = MultiCropDataset(source, specs, seed=0, rank=0, device_photometric=False)
        indices = range(len(source))
        photometric = Photometric()
        by_size = {}
        for crops in zip(*(split[(0, i)][0] for i in range(args.batch)), strict=True):
            stacked = torch.stack(crops)
            by_size.setdefault(stacked.shape[-1], []).append(stacked)
        device_batches = [torch.cat(group) for group in by_size.values()]  # one call per resolution
        generator = torch.Generator().manual_seed(0)

        def photometric_batch() -> None:
            for batch in device_batches:
                photometric.apply(batch, generator)

        cases: dict[str, tuple[int, Callable[[], None]]] = {
            "JPEG decode only (full size, RGB)": (len(source), lambda: [source.load(i) for i in indices]),
            "split path, worker: decode + uint8 crops": (len(source), lambda: [split[(0, i)] for i in indices]),
            "  same without JPEG draft": (len(source), lambda: [no_draft[(0, i)] for i in indices]),
            "split path, device side on this CPU": (args.batch, photometric_batch),
            "seed-style PIL path (per image, float)": (len(source), lambda: [seed_style[(0, i)] for i in indices]),
        }
        rates: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (count, run) in cases.items():
                best_rate(count, run, rates[name])
    best = {name: max(values) for name, values in rates.items()}

    decode, worker = best["JPEG decode only (full size, RGB)"], best["split path, worker: decode + uint8 crops"]
    device_cpu, seed = best["split path, device side on this CPU"], best["seed-style PIL path (per image, float)"]
    split_on_cpu = 1 / (1 / worker + 1 / device_cpu)
    recipe = " + ".join(f"{n}x{s}" for n, s in zip(RECIPE["nmb_crops"], RECIPE["size_crops"], strict=True))
    print(f"loader images/s per core, {recipe} crops of {args.images} JPEGs 500x375, best of {args.rounds}")
    for name, rate in best.items():
        print(f"  {name:<44} {rate:8.1f}")
    print(f"  {'split path, everything on this CPU':<44} {split_on_cpu:8.1f}")
    print(f"CPU cost per image, seed-style / split worker (GPU does photometric): {worker / seed:5.1f}x "
          "(target >= 5x)")
    print(f"CPU cost per image, split worker / pure decode:                       {decode / worker:5.1f}x "
          "(goal <= 3x)")
    print(f"CPU cost per image, seed-style / split all on CPU (no GPU):            {split_on_cpu / seed:5.1f}x")
    print(f"JPEG draft speed-up of the worker side:                               "
          f"{worker / best['  same without JPEG draft']:5.1f}x")


if __name__ == "__main__":
    main()
