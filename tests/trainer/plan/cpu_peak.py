"""Run as a script: the peak RSS growth of real pretraining steps on the CPU, printed as JSON (a fresh process per
measurement, so that ru_maxrss is this step's high-water mark). Used by test_memory_calibration.py.

    python tests/trainer/plan/cpu_peak.py ARCH BATCH SIZE [SIZE2] [--amp] [--tensors]

--tensors counts live tensor bytes with trainer.plan.memory.LiveBytes on the CPU instead of RSS (the same
counter the model uses, here on real kernels: what autocast keeps in half precision).
"""

from __future__ import annotations

import json
import resource
import sys

import torch

from trainer import config, swav_step
from trainer.cli import build_parser
from trainer.data.photometric import Photometric
from trainer.distributed import DistEnv
from trainer.plan.memory import measure_steps


def pretrain_cfg(arch: str, sizes: list[int]) -> object:
    counts = ["2"] * len(sizes)
    args = build_parser("pretrain").parse_args([
        "--data_path", "unused", "--arch", arch, "--nmb_crops", *counts, "--size_crops", *map(str, sizes),
        "--min_scale_crops", *["0.3"] * len(sizes), "--max_scale_crops", *["1"] * len(sizes),
        "--nmb_prototypes", "300", "--hidden_mlp", "512", "--feat_dim", "64", "--optimizer", "lars",
        "--queue_length", "0", "--device", "cpu"])
    return config.resolve(args)


def rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() // 1024


def cpu_step_peak(arch: str, batch: int, sizes: list[int], amp: bool) -> int:
    """Bytes of peak RSS growth over two steps at `batch`, from the built state and crops."""
    torch.set_num_threads(1)
    cfg = pretrain_cfg(arch, sizes)
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    state = swav_step.build_state(cfg, env, swav_step.Schedule(iters_per_epoch=10, total_steps=100))
    ctx = swav_step.StepContext(cfg, env, state.model, Photometric(blur_prob=cfg.blur_prob),
                               torch.bfloat16 if amp else None)
    crops = [torch.zeros(batch, 3, size, size, dtype=torch.uint8) for size in sizes for _ in range(2)]
    reset_peak()  # the step's own high-water mark, not one an import or the set-up reached before it
    base = rss_kib()
    for _ in range(2):
        swav_step.train_step(state, ctx, crops, 0)
    return (peak_kib() - base) * 1024


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: `5` to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_kib() -> int:
    """VmHWM, the peak RSS since the last reset_peak."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))


def main() -> None:
    arch, batch, *rest = sys.argv[1:]
    amp, device = "--amp" in rest, "meta" if "--meta" in rest else "cpu"
    tensors = "--tensors" in rest or device == "meta"
    sizes = [int(value) for value in rest if not value.startswith("--")]
    if tensors:
        _, built, _, peaks = measure_steps(pretrain_cfg(arch, sizes), (int(batch),), 1, torch.device(device),
                                         torch.bfloat16 if amp else None)
        print(json.dumps({"bytes": max(peaks) - built}))
        return
    print(json.dumps({"bytes": cpu_step_peak(arch, int(batch), sizes, amp)}))


if __name__ == "__main__":
    main()
