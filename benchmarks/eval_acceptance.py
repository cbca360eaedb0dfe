"""Acceptance check: a few CPU minutes of `unmix-swav pretrain` beat a randomly initialised trunk.

    OMP_NUM_THREADS=2 python benchmarks/eval_acceptance.py [--output DIR] [--epochs N] [--min_gain 10]

`make demo`'s recipe (pipeline/local_run.py) on top of demo_cpu, as the README's table measured it:

    ... --epochs 20 --pretrain_flags "--nmb_crops 2 4 --size_crops 32 16 --min_scale_crops 0.3 0.08
        --max_scale_crops 1.0 0.3 --base_lr 0.005" --val_images_per_class 50 --images_per_class 60

1. Generates `builtin:textures` (trainer.data.synthetic) with train/ and val/ splits: the class is a
   pattern that fills every crop, its colours vary across each image (see the module's docstring).
2. Pretrains resnet_tiny with `unmix-swav pretrain --preset demo_cpu` on train/ (SwAV + Un-Mix).
3. Scores the pretrained backbone.pth and a randomly initialised trunk with `unmix-swav eval-knn` and
   `unmix-swav eval-linear --cached_features` (labels of train/, accuracy on val/).
4. Prints a table of val top-1 and the wall time of every step.
Every step is the real command in its own process, as a user would run it. Not a test: it prints numbers,
and exits 1 when pretraining does not beat the random trunk by `--min_gain` points in both evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainer.data.synthetic import make_generated  # noqa: E402

ARCH = "resnet_tiny"


def run_command(command: str, argv: list[str], log_path: str) -> float:
    """Run `unmix-swav <command> argv` in a child process (output to `log_path`); returns its wall time."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        result = subprocess.run([sys.executable, "-m", "trainer", command, *argv], stdout=log,
                                stderr=subprocess.STDOUT, check=False)
    if result.returncode:
        raise SystemExit(f"unmix-swav {command} failed (exit {result.returncode}); see {log_path}")
    return time.perf_counter() - started


def read_json(path: str) -> dict:
    with open(path) as file:
        return json.load(file)


def pretrain_summary(dump: str) -> dict[str, float]:
    """Steps, last logged loss and median images/s of the run, from its metrics.jsonl."""
    with open(os.path.join(dump, "metrics.jsonl")) as lines:
        steps = [record for record in map(json.loads, lines) if "images_per_s" in record]
    speeds = sorted(record["images_per_s"] for record in steps)
    return {"steps": steps[-1]["step"], "loss": steps[-1]["loss"], "images_per_s": speeds[len(speeds) // 2]}


def evaluate(data: str, pretrained: str, name: str, args: argparse.Namespace) -> dict[str, float]:
    """kNN and linear val top-1 of the trunk in `pretrained` ("" for a random trunk) and their wall times."""
    common = ["--data_path", data, "--pretrained", pretrained, "--arch", ARCH, "--device", "cpu",
              "--image_size", str(args.image_size), "--workers", "0"]
    out = os.path.join(args.output, f"eval-{name}")
    knn_dump, linear_dump = f"{out}-knn", f"{out}-linear"
    knn_s = run_command("eval-knn", [*common, "--dump_path", knn_dump], f"{knn_dump}.log")
    linear_s = run_command("eval-linear", [*common, "--dump_path", linear_dump, "--cached_features",
                                           "--epochs", str(args.linear_epochs), "--batch_size", "32"],
                           f"{linear_dump}.log")
    return {"knn": read_json(os.path.join(knn_dump, "metrics.json"))["top1"],
            "linear": read_json(os.path.join(linear_dump, "metrics.json"))["top1"],
            "knn_s": knn_s, "linear_s": linear_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="", help="work folder (default: a new temporary folder)")
    parser.add_argument("--num_classes", type=int, default=6)
    parser.add_argument("--images_per_class", type=int, default=100, help="training images per class")
    parser.add_argument("--val_images_per_class", type=int, default=50)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the preset's)")
    parser.add_argument("--pretrain_flags", default="", help='more pretrain flags, e.g. "--run_swav true"')
    parser.add_argument("--linear_epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--min_gain", type=float, default=10.0,
                        help="top-1 points by which pretrained must beat random in kNN and in linear")
    args = parser.parse_args()
    args.output = args.output or tempfile.mkdtemp(prefix="eval-acceptance-")
    data, dump = os.path.join(args.output, "textures"), os.path.join(args.output, "pretrain")

    started = time.perf_counter()
    make_generated("textures", data, args.num_classes, args.images_per_class, args.val_images_per_class,
                   args.image_size, args.seed)
    generate_s = time.perf_counter() - started
    pretrain_argv = ["--preset", "demo_cpu", "--data_path", os.path.join(data, "train"), "--dump_path", dump,
                     "--device", "cpu", *(["--epochs", str(args.epochs)] if args.epochs else []),
                     *shlex.split(args.pretrain_flags)]
    pretrain_s = run_command("pretrain", pretrain_argv, f"{dump}.log")
    run = pretrain_summary(dump)
    results = {"random": evaluate(data, "", "random", args),
               "pretrained": evaluate(data, os.path.join(dump, "backbone.pth"), "pretrained", args)}

    print(f"builtin:textures: {args.num_classes} classes, {args.images_per_class} train + "
          f"{args.val_images_per_class} val images per class, {args.image_size} px ({generate_s:.0f} s)")
    print(f"pretrain --preset demo_cpu {args.pretrain_flags}: {run['steps']} steps in {pretrain_s:.0f} s "
          f"({run['images_per_s']:.1f} images/s), last loss {run['loss']:.3f}; torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"chance: {100 / args.num_classes:.1f}% top-1\n")
    print(f"{'trunk':<12}{'kNN top-1':>11}{'linear top-1':>14}{'eval time':>11}")
    for name, row in results.items():
        print(f"{name:<12}{row['knn']:>10.1f}%{row['linear']:>13.1f}%{row['knn_s'] + row['linear_s']:>10.0f}s")
    gains = {kind: results["pretrained"][kind] - results["random"][kind] for kind in ("knn", "linear")}
    print(f"\ngain: kNN {gains['knn']:+.1f} points, linear {gains['linear']:+.1f} points; outputs in "
          f"{args.output}")
    if min(gains.values()) < args.min_gain:
        raise SystemExit(f"pretraining beat the random trunk by less than {args.min_gain} points")


if __name__ == "__main__":
    main()
