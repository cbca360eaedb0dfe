"""`unmix-swav eval-semisup`: fine-tune trunk + linear head on 1% or 10% of the labels (the seed's flags).

Protocol: SGD momentum 0.9 without weight decay, trunk lr / head lr per labels_perc (10%: 0.01 / 0.2,
1%: 0.02 / 5.0), 20 epochs, lr x0.2 at epochs 12 and 16. The labelled subset is `--subset_file` (SimCLR
list format, any fsspec URL) or a class-balanced draw from --seed; either way it is written to
`<dump_path>/subset.txt` so the run can be repeated exactly with `--subset_file`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.config import AT_LEAST_1, POSITIVE, check_ranges
from trainer.data.sources import open_source
from trainer.distributed import DistEnv
from trainer.evaluation.common import (
    add_common_arguments,
    check_common,
    check_milestones,
    evaluation_session,
    prepare_trunk,
    training_settings,
)
from trainer.evaluation.features import SourceDataset, aligned_targets, eval_transform, train_transform
from trainer.evaluation.loop import TrainingSpec, fit
from trainer.evaluation.subsets import balanced_subset, check_subset_file, read_subset_file, subset_text

log = logging.getLogger(__name__)

# (trunk lr, head lr) of the paper for each label percentage.
PROTOCOL_LRS = {1: (0.02, 5.0), 10: (0.01, 0.2)}


class FineTuneModel(nn.Module):
    """Trunk + linear head; its state dict (`trunk.*`, `head.*`) loads back with --pretrained."""

    def __init__(self, trunk: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, batch_size=32)
    group = parser.add_argument_group("semi-supervised fine-tuning")
    group.add_argument("--labels_perc", type=int, default=10, choices=sorted(PROTOCOL_LRS))
    group.add_argument("--subset_file", default="",
                       help="URL of a SimCLR-format list (one image file name a line); default: a "
                            "class-balanced draw from --seed")
    group.add_argument("--epochs", type=int, default=20)
    group.add_argument("--lr", type=float, default=None, help="trunk lr (default 0.01 for 10%%, 0.02 for 1%%)")
    group.add_argument("--lr_last_layer", type=float, default=None,
                       help="head lr (default 0.2 for 10%%, 5.0 for 1%%)")
    group.add_argument("--decay_epochs", type=int, nargs="+", default=[12, 16])
    group.add_argument("--gamma", type=float, default=0.2)


RANGES = {"epochs": AT_LEAST_1, "lr": POSITIVE, "lr_last_layer": POSITIVE, "gamma": POSITIVE}


def _resolve(args: argparse.Namespace) -> None:
    check_common(args)
    trunk_lr, head_lr = PROTOCOL_LRS[args.labels_perc]
    args.lr = trunk_lr if args.lr is None else args.lr
    args.lr_last_layer = head_lr if args.lr_last_layer is None else args.lr_last_layer
    check_ranges(args, RANGES)
    check_milestones(args.decay_epochs)
    if args.subset_file:
        check_subset_file(args.subset_file)


def choose_subset(args: argparse.Namespace, source) -> tuple[list[int], str, str]:
    """The labelled indices, their subset.txt and its sha256."""
    if args.subset_file:
        indices = read_subset_file(source, args.subset_file)
    else:
        indices = balanced_subset(source.targets, len(source.classes), args.labels_perc, args.seed)
    text, digest = subset_text(source, indices)
    log.info("labelled subset: %d of %d images (%s)", len(indices), len(source),
             args.subset_file or f"class-balanced {args.labels_perc}%, seed {args.seed}")
    return indices, text, digest


def run_semisup(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and evaluate; rank 0 writes subset.txt, metrics.json, TensorBoard and checkpoints."""
    _resolve(args)
    with evaluation_session("eval-semisup", args) as (env, session):
        return fit(semisup_spec(args, env), session)


def semisup_spec(args: argparse.Namespace, env: DistEnv) -> TrainingSpec:
    """The trunk + head, labelled subset, data and optimizer of a semi-supervised fine-tuning."""
    trunk, feature_dim, pretrained = prepare_trunk(args.arch, args.pretrained, args.seed, env.device)
    train_source = open_source(args.data_path, split="train")
    val_source = open_source(args.data_path, split="val")
    indices, subset, subset_sha256 = choose_subset(args, train_source)
    model = FineTuneModel(trunk, feature_dim, len(train_source.classes)).to(env.device)
    forward: nn.Module = model
    if env.is_distributed:
        if env.device.type == "cuda":  # SyncBatchNorm has no CPU kernel
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        forward = DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optimizer = torch.optim.SGD([
        {"params": model.trunk.parameters(), "lr": args.lr},
        {"params": model.head.parameters(), "lr": args.lr_last_layer},
    ], lr=args.lr, momentum=0.9, weight_decay=0.0)
    identity = {"command": "eval-semisup", "arch": args.arch, "classes": train_source.classes,
                "pretrained_sha256": pretrained["sha256"] if pretrained else None,
                "subset_sha256": subset_sha256, "image_size": args.image_size,
                **training_settings(args, ["lr", "lr_last_layer", "decay_epochs", "gamma"])}
    spec = TrainingSpec(
        command="eval-semisup", args=args, env=env, identity=identity, pretrained=pretrained,
        model=model, logits=forward, train_mode=model.train, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, args.decay_epochs, gamma=args.gamma),
        train_set=SourceDataset(train_source, train_transform(args.image_size), indices=indices),
        classes=train_source.classes,
        val_set=SourceDataset(val_source, eval_transform(args.image_size),
                              targets=aligned_targets(train_source.classes, val_source)),
        extra_results={"labelled_samples": len(indices), "subset_sha256": subset_sha256},
        divergence_fix=(f"--lr_last_layer {args.lr_last_layer:g} is likely too high for {len(indices)} labelled "
                        "images (the protocol's 5.0 for 1% is sized for ImageNet's 12,811); lower it, e.g. "
                        f"--lr_last_layer {args.lr_last_layer / 10:g}, or lower --lr"),
        outputs={"subset.txt": subset})
    return spec


def check(args: argparse.Namespace, world_size: int) -> None:
    """The checks `run` makes before any work (launchers call it before any pod); none depends on world_size."""
    _resolve(args)


def run(args: argparse.Namespace) -> None:
    run_semisup(args)
