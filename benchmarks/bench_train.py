"""CPU training throughput through the real `unmix-swav pretrain` step, and the LARS step before/after.

    python benchmarks/bench_train.py [--arch resnet_tiny] [--batch_size 8] [--steps 3]

1. Runs `pretrain` in this process on generated 500x375 JPEGs (the default 2x224 + 6x96 recipe with Un-Mix,
   device-side photometric ops on the CPU) for `--steps` + 1 steps and prints images/s of the steps after
   the first (which pays for warm-up), from the run's own metrics.jsonl.
2. Times one LARS optimizer step on ResNet-50 SwAV parameters: the seed's per-parameter loop (apex LARC:
   a Python branch on each parameter's norms, then SGD's per-parameter loop) against trainer.optim.LARC
   (foreach, no host syncs) with SGD as pretrain builds it.
Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loader import write_jpegs  # noqa: E402

from trainer import cli  # noqa: E402
from trainer.models.heads import SwAVHead, SwAVModel  # noqa: E402
from trainer.models.resnet import build_trunk  # noqa: E402
from trainer.optim import LARC  # noqa: E402


def training_images_per_s(args: argparse.Namespace, folder: str) -> tuple[float, float]:
    """(images/s, mean data wait in s) of the steps after the first, as `pretrain` logged them."""
    data = write_jpegs(os.path.join(folder, "data"), max(32, args.batch_size * (args.steps + 1)))
    dump = os.path.join(folder, "run")
    cli.run_command("pretrain", [
        "--data_path", data, "--dump_path", dump, "--device", "cpu", "--arch", args.arch,
        "--batch_size", str(args.batch_size), "--max_steps", str(args.steps + 1), "--log_freq", "1",
        "--workers", str(args.workers), "--epochs", "1", "--warmup_epochs", "0", "--base_lr", "0.6",
        "--nmb_crops", "2", "6", "--size_crops", *map(str, args.size_crops), "--min_scale_crops", "0.14", "0.05",
        "--max_scale_crops", "1", "0.14", "--nmb_prototypes", "300", "--run_swav", str(args.run_swav),
    ])
    with open(os.path.join(dump, "metrics.jsonl")) as lines:
        steps = [record for record in map(json.loads, lines) if "images_per_s" in record][1:]
    return (statistics.median(r["images_per_s"] for r in steps), statistics.mean(r["data_time"] for r in steps))


class LoopLARC(LARC):
    """The seed's apex LARC(clip=False): one Python branch per parameter on its norms (a host sync each)."""

    def rescale_gradients(self, params: list[torch.Tensor], weight_decay: float) -> None:
        for p in params:
            param_norm, grad_norm = torch.norm(p), torch.norm(p.grad)
            if param_norm != 0 and grad_norm != 0:
                adaptive = self.trust_coefficient * param_norm / (grad_norm + param_norm * weight_decay + self.eps)
                p.grad.add_(p, alpha=weight_decay).mul_(adaptive)


def lars_comparison(rounds: int) -> dict[str, float]:
    """Best-of-`rounds` seconds per optimizer step, variants interleaved (other processes share the CPU)."""
    trunk, width = build_trunk("resnet50")
    model = SwAVModel(trunk, SwAVHead(width, 2048, 128, 3000))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    variants = {
        "seed: per-parameter LARC + SGD loop": LoopLARC(torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6, foreach=False)),
        # as pretrain builds it: SGD picks its foreach implementation on GPUs, its loop on the CPU
        "now:  foreach LARC + SGD default": LARC(torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)),
    }
    seconds = {name: float("inf") for name in variants}
    for optimizer in variants.values():
        optimizer.step()  # momentum buffers exist from here on, as in training
    for _ in range(rounds):
        for name, optimizer in variants.items():
            start = time.perf_counter()
            optimizer.step()
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet_tiny")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="measured steps (one more runs first)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size_crops", type=int, nargs=2, default=[224, 96])
    parser.add_argument("--run_swav", default="false", help="true: plain SwAV, no Un-Mix mixtures")
    parser.add_argument("--lars_rounds", type=int, default=5)
    args = parser.parse_args()

    seconds = lars_comparison(args.lars_rounds)
    with tempfile.TemporaryDirectory() as folder:
        images_per_s, data_time = training_images_per_s(args, folder)
    mixtures = "" if args.run_swav.lower() == "true" else " + Un-Mix mixtures"
    print(f"CPU training, {args.arch}, 2x{args.size_crops[0]} + 6x{args.size_crops[1]}{mixtures}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads: {images_per_s:.2f} images/s "
          f"(data wait {data_time:.3f} s/step)")
    print("LARS optimizer step, ResNet-50 SwAV parameters, CPU:")
    for name, value in seconds.items():
        print(f"  {name:<40} {value * 1e3:8.1f} ms")
    before, after = seconds.values()
    print(f"  speed-up {before / after:.2f}x (on a GPU the seed's loop also syncs with the host per parameter)")


if __name__ == "__main__":
    main()
