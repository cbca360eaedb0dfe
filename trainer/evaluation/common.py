"""Flags, trunk set-up and resume checks shared by eval-linear, eval-semisup and eval-knn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from trainer import storage
from trainer.errors import UserError
from trainer.models.pretrained import load_pretrained_trunk
from trainer.models.resnet import ARCHS, build_trunk
from trainer.seeding import derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth.tar"


def setup_logging() -> None:
    """INFO lines on stderr from rank 0, warnings only from the other ranks (read before init)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


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


def check_common(args: argparse.Namespace) -> None:
    if args.image_size < 32:
        raise UserError(f"--image_size {args.image_size} is too small for a ResNet; use 32 or more")
    if args.batch_size < 1 or args.workers < 0:
        raise UserError("--batch_size must be >= 1 and --workers >= 0")


def prepare_trunk(arch: str, pretrained: str, seed: int, device: torch.device
                  ) -> tuple[nn.Module, int, dict[str, Any] | None]:
    """The trunk of `arch` with `pretrained` loaded, on `device`; its feature width and a load record.

    The random initialisation is seeded, so that every rank of a run without --pretrained holds the same
    random trunk.
    """
    torch.manual_seed(derive_seed(seed, 0))
    trunk, feature_dim = build_trunk(arch)
    record = None
    if pretrained:
        report = load_pretrained_trunk(trunk, pretrained)
        record = {"url": pretrained, **asdict(report)}
    else:
        log.warning("no --pretrained given: evaluating a RANDOMLY INITIALISED %s trunk (a baseline)", arch)
    return trunk.to(device), feature_dim, record


def checkpoint_url(dump_path: str) -> str:
    return storage.join(dump_path, CHECKPOINT_NAME)


def load_resume_state(dump_path: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint of an interrupted run of the same evaluation, or None when starting fresh.

    `identity` (command, arch, pretrained checksum, classes, ...) must match the checkpoint's, so a reused
    --dump_path never continues a different run.
    """
    url = checkpoint_url(dump_path)
    if not storage.exists(url):
        return None
    state = storage.load_torch(url)
    if not isinstance(state, dict) or state.get("identity") != identity:
        found = state.get("identity") if isinstance(state, dict) else None
        differing = sorted(k for k in identity if not found or found.get(k) != identity[k])
        raise UserError(f"{url} belongs to a different run (differs in {', '.join(differing) or 'format'}); "
                        "use a new --dump_path or delete the old checkpoint")
    log.info("resuming from %s (epoch %d done)", url, state.get("epoch", 0))
    return state
