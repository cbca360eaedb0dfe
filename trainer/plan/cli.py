"""`unmix-swav plan`: the pretraining flags (presets, config files, the usual precedence) plus the cluster, and
the plan of the run before any GPU starts: the recipe scaled to the global batch, memory per GPU, time, cost.

Exit 2 (after printing the plan) when the per-GPU batch does not fit the GPU's memory.
"""

from __future__ import annotations

import argparse
import json

from trainer import config
from trainer.errors import UserError
from trainer.plan.gpus import GPUS
from trainer.plan.planner import plan_for, validate_for_planning


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    group = parser.add_argument_group("cluster")
    group.add_argument("--num_nodes", type=positive_int, default=1, help="nodes (default: 1)")
    group.add_argument("--gpus_per_node", type=positive_int, default=8, help="GPUs per node (default: 8)")
    group.add_argument("--gpu", choices=list(GPUS), default=None, help="GPU kind (default: h100, said in the output)")
    group.add_argument("--gpu_memory_gib", type=positive_float, default=None, help="replaces the table's memory")
    group.add_argument("--gpu_images_per_s", type=positive_float, default=None,
                       help="ResNet-50 AMP training images/s of one GPU at 224 px; replaces the table's figure")
    group.add_argument("--price_per_gpu_hour", type=non_negative_float, default=None, help="for the cost")
    group.add_argument("--preemptions_per_node_day", type=non_negative_float, default=1.0,
                       help="expected preemptions of one node a day, for the checkpoint interval (default: 1)")
    group.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> None:
    cfg = config.resolve(args)
    world_size = args.num_nodes * args.gpus_per_node
    given = config.given_flags(args)
    validate_for_planning(cfg, world_size, given)
    plan = plan_for(cfg, args.num_nodes, args.gpus_per_node, args.gpu, given,
                    gpu_memory_gib=args.gpu_memory_gib, gpu_images_per_s=args.gpu_images_per_s,
                    price_per_gpu_hour=args.price_per_gpu_hour,
                    preemptions_per_node_day=args.preemptions_per_node_day)
    config.validate(plan.cfg, world_size)
    print(json.dumps(plan.to_json(), indent=2, sort_keys=True) if args.json else plan.table(), flush=True)
    if not plan.memory.fits:
        raise UserError(f"batch {plan.cfg.batch_size} per GPU needs {plan.memory.gib_per_gpu:.1f} GiB, more than the "
                        f"{plan.gpu.name}'s {plan.gpu.memory_gib:g} GiB; use --batch_size {plan.memory.largest_batch} "
                        "or less, or a GPU with more memory")
