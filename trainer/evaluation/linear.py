"""`unmix-swav eval-linear`: a linear classifier on the frozen trunk (the seed's flags and protocol).

Frozen trunk in eval mode (BatchNorm statistics included), pooled features, optional BatchNorm, one
Linear layer initialised N(0, 0.01) with zero bias; SGD with momentum 0.9, cosine or step schedule.
With `--cached_features` the trunk encodes train and val once (centre crops, no augmentation) and the
classifier trains on those vectors: a fast probe, not the paper's protocol.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, check_ranges
from trainer.data.sources import open_source
from trainer.distributed import DistEnv
from trainer.errors import UserError
from trainer.evaluation.common import (
    add_common_arguments,
    bool_flag,
    check_common,
    check_milestones,
    evaluation_session,
    prepare_trunk,
    training_settings,
)
from trainer.evaluation.features import (
    FeatureShard,
    SourceDataset,
    aligned_targets,
    eval_transform,
    extract_features,
    feature_map,
    shard_sampler,
    train_transform,
)
from trainer.evaluation.loop import TrainingSpec, fit

log = logging.getLogger(__name__)

SEED_POOL_WINDOW = 6  # the seed's AvgPool2d(6, stride=1) without global pooling: 7x7 -> 2x2 at 224 px


class LinearClassifier(nn.Module):
    """(optional BatchNorm) + Linear on pooled feature vectors."""

    def __init__(self, in_dim: int, num_classes: int, use_bn: bool):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim) if use_bn else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(features))


def build_pool(global_pooling: bool) -> nn.Module:
    if global_pooling:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(nn.AvgPool2d(SEED_POOL_WINDOW, stride=1), nn.Flatten())


@torch.no_grad()
def pooled_dim(trunk: nn.Module, pool: nn.Module, image_size: int, device: torch.device) -> int:
    was_training = trunk.training
    trunk.eval()
    grid = feature_map(trunk, torch.zeros(1, 3, image_size, image_size, device=device))
    trunk.train(was_training)
    if grid.shape[-1] < SEED_POOL_WINDOW and not isinstance(pool[0], nn.AdaptiveAvgPool2d):
        raise UserError(f"--global_pooling false needs a feature map of at least {SEED_POOL_WINDOW} px "
                        f"(--image_size >= 192); --image_size {image_size} gives {grid.shape[-1]}")
    return pool(grid).shape[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, batch_size=32)
    group = parser.add_argument_group("linear classifier")
    group.add_argument("--epochs", type=int, default=100)
    group.add_argument("--lr", type=float, default=0.3)
    group.add_argument("--wd", type=float, default=1e-6)
    group.add_argument("--nesterov", type=bool_flag, default=False)
    group.add_argument("--scheduler_type", default="cosine", choices=["cosine", "step"])
    group.add_argument("--decay_epochs", type=int, nargs="+", default=[60, 80], help="for the step schedule")
    group.add_argument("--gamma", type=float, default=0.1, help="step schedule decay factor")
    group.add_argument("--final_lr", type=float, default=0.0, help="end of the cosine schedule")
    group.add_argument("--global_pooling", type=bool_flag, default=True)
    group.add_argument("--use_bn", type=bool_flag, default=False)
    group.add_argument("--cached_features", action="store_true",
                       help="encode train/val once without augmentation and train on the vectors")


def make_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    if args.scheduler_type == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.final_lr)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, args.decay_epochs, gamma=args.gamma)


RANGES = {"epochs": AT_LEAST_1, "lr": POSITIVE, "wd": AT_LEAST_0, "gamma": POSITIVE, "final_lr": AT_LEAST_0}


def _check(args: argparse.Namespace) -> None:
    check_common(args)
    check_ranges(args, RANGES)
    check_milestones(args.decay_epochs)


def run_linear(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate the linear classifier; rank 0 writes metrics.json, TensorBoard and checkpoints."""
    _check(args)
    with evaluation_session("eval-linear", args) as (env, session):
        return fit(linear_spec(args, env), session)


def linear_spec(args: argparse.Namespace, env: DistEnv) -> TrainingSpec:
    """The trunk, data, classifier and optimizer of a linear evaluation."""
    trunk, _, pretrained = prepare_trunk(args.arch, args.pretrained, args.seed, env.device)
    trunk.requires_grad_(False)
    trunk.eval()
    train_source = open_source(args.data_path, split="train")
    val_source = open_source(args.data_path, split="val")
    val_targets = aligned_targets(train_source.classes, val_source)
    pool = build_pool(args.global_pooling)
    classifier = LinearClassifier(pooled_dim(trunk, pool, args.image_size, env.device),
                                  len(train_source.classes), args.use_bn).to(env.device)
    ddp_classifier = classifier
    if env.is_distributed:
        ddp_classifier = DistributedDataParallel(
            classifier, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    train_sampler = None
    if args.cached_features:
        # Every rank keeps only the features it encoded (its strided share): about N / W x D x 4 bytes per
        # rank, never the whole matrix. It trains on its own share, reshuffled every epoch; DDP averages the
        # gradients, so a global batch is W per-rank batches drawn from the W shares.
        def encode_split(source, targets, desc: str) -> FeatureShard:
            dataset = SourceDataset(source, eval_transform(args.image_size), targets=targets)
            return extract_features(trunk, dataset, env.device, args.batch_size, args.workers, env, desc,
                                    pool=pool)

        train_set = encode_split(train_source, None, "train features")
        val_set = encode_split(val_source, val_targets, "val features")
        train_sampler = shard_sampler(train_set, env, args.seed)
        log.info("cached features: this rank holds %d train + %d val rows (%.1f MiB)", len(train_set),
                 len(val_set), (train_set.nbytes + val_set.nbytes) / 2**20)
        logits = ddp_classifier
    else:
        train_set = SourceDataset(train_source, train_transform(args.image_size))
        val_set = SourceDataset(val_source, eval_transform(args.image_size), targets=val_targets)

        def logits(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                features = pool(feature_map(trunk, images))
            return ddp_classifier(features)

    optimizer = torch.optim.SGD(classifier.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd,
                                nesterov=args.nesterov)
    identity = {"command": "eval-linear", "arch": args.arch, "classes": train_source.classes,
                "pretrained_sha256": pretrained["sha256"] if pretrained else None,
                "global_pooling": args.global_pooling, "use_bn": args.use_bn,
                "cached_features": args.cached_features, "image_size": args.image_size,
                **training_settings(args, ["lr", "wd", "nesterov", "scheduler_type", "decay_epochs",
                                           "gamma", "final_lr"])}
    spec = TrainingSpec(command="eval-linear", args=args, env=env, identity=identity,
                        pretrained=pretrained, model=classifier, logits=logits, train_mode=classifier.train,
                        optimizer=optimizer, scheduler=make_scheduler(args, optimizer),
                        train_set=train_set, val_set=val_set, classes=train_source.classes,
                        train_sampler=train_sampler)
    return spec


def check(args: argparse.Namespace, world_size: int) -> None:
    """The checks `run` makes before any work (launchers call it before any pod); none depends on world_size."""
    _check(args)


def run(args: argparse.Namespace) -> None:
    run_linear(args)
