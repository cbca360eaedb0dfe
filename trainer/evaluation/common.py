"""Flags, their checks and the trunk set-up shared by eval-linear, eval-semisup and eval-knn."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer import storage
from trainer.config import Range, check_ranges
from trainer.distributed import DistEnv, cleanup, init_distributed
from trainer.errors import UserError
from trainer.models.pretrained import is_random_init, load_pretrained_trunk, random_init_record
from trainer.models.resnet import ARCHS, build_trunk
from trainer.run.session import RunSession
from trainer.seeding import derive_seed

log = logging.getLogger(__name__)

def training_settings(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The settings that shape the optimisation: a checkpoint is only resumed when they all agree."""
    return {name: getattr(args, name) for name in ["epochs", "batch_size", "seed", *names]}


def bool_flag(text: str) -> bool:
    """The seed's boolean flags: `--use_bn true`, `--nesterov false`."""
    lowered = text.lower()
    if lowered in ("true", "on", "1", "yes"):
        return True
    if lowered in ("false", "off", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def add_common_arguments(parser: argparse.ArgumentParser, batch_size: int, workers: int = 4) -> None:
    group = parser.add_argument_group("data, trunk and output")
    group.add_argument("--data_path", required=True,
                       help="URL of a dataset holding train/ and val/ (folders of class folders or staged)")
    group.add_argument("--pretrained", default="",
                       help="checkpoint URL (checkpoint.pth.tar, backbone.pth, SwAV release, torchvision); "
                            "empty evaluates a randomly initialised trunk, as a baseline")
    group.add_argument("--arch", default="resnet50", choices=list(ARCHS))
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.add_argument("--image_size", type=int, default=224, help="crop size (resize is size * 256/224)")
    group.add_argument("--batch_size", type=int, default=batch_size, help="images per process")
    group.add_argument("--workers", type=int, default=workers, help="data loader processes per process")
    group.add_argument("--dump_path", default=".", help="URL where metrics, TensorBoard and checkpoints go")
    group.add_argument("--seed", type=int, default=31)


COMMON_RANGES = {"image_size": Range(32, note="a ResNet downsamples 32x"), "batch_size": Range(1),
                 "workers": Range(0, note="0: load data in the evaluating process")}


def check_file(flag: str, url: str, fix: str) -> None:
    """Refuse `--flag url` unless it names an existing, readable file (not a folder); `fix` says what to pass."""
    fs, path = storage.filesystem(url)
    if not storage.with_retries(lambda: fs.exists(path), f"checking {url}"):
        raise UserError(f"{flag} {url} does not exist; {fix}")
    if not storage.with_retries(lambda: fs.isfile(path), f"checking {url}"):
        raise UserError(f"{flag} {url} is a folder, not a file; {fix}")
    if storage.is_local(url) and not os.access(path, os.R_OK):
        raise UserError(f"{flag} {url} is not readable (permission denied); {fix}")


def check_pretrained(url: str) -> None:
    if not is_random_init(url):
        check_file("--pretrained", url, "pass a checkpoint file (checkpoint.pth.tar, backbone.pth, a SwAV or "
                                        "torchvision state dict), or leave it empty for a random trunk")


def check_milestones(epochs: list[int]) -> None:
    """The step schedule's --decay_epochs: positive and increasing, as MultiStepLR reads them."""
    if min(epochs) < 1 or epochs != sorted(set(epochs)):
        raise UserError(f"--decay_epochs {' '.join(map(str, epochs))} must be positive epochs in increasing "
                        "order, e.g. 60 80")


def check_common(args: argparse.Namespace) -> None:
    """The flags of add_common_arguments, before any work."""
    check_ranges(args, COMMON_RANGES)
    check_pretrained(args.pretrained)


def prepare_trunk(arch: str, pretrained: str, seed: int, device: torch.device
                  ) -> tuple[nn.Module, int, dict[str, Any]]:
    """The trunk of `arch` with `pretrained` loaded, on `device`; its feature width and a load record.

    The random initialisation is seeded, so that every rank of a run without --pretrained holds the same
    random trunk.
    """
    torch.manual_seed(derive_seed(seed, 0))
    trunk, feature_dim = build_trunk(arch)
    record = random_init_record(seed)
    if not is_random_init(pretrained):
        report = load_pretrained_trunk(trunk, pretrained)
        record = {"url": pretrained, **asdict(report)}
    else:
        log.warning("no --pretrained weights: evaluating a RANDOMLY INITIALISED %s trunk (a baseline)", arch)
    return trunk.to(device), feature_dim, record


@contextmanager
def evaluation_session(command: str, args: argparse.Namespace) -> Iterator[tuple[DistEnv, RunSession]]:
    """The distributed set-up (from the environment, torchrun's or none) and the RunSession of one evaluation
    under --dump_path; the process group is ended after, unless the caller had set it up (tests, pretraining's
    kNN monitor)."""
    owns_group = not (dist.is_available() and dist.is_initialized())
    env = init_distributed(args.device)
    try:
        with RunSession(command, args.dump_path, env) as session:
            yield env, session
    finally:
        if owns_group:
            cleanup()
