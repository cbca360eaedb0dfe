"""Pretraining flags: the seed's names, defaults and meaning, plus presets, YAML configs and validation.

Precedence: seed defaults < --preset < --config FILE.yaml < flags given on the command line. Every flag
is parsed with default None so that "given" can be told from "defaulted".
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import yaml

from trainer import storage
from trainer.errors import UserError
from trainer.models.resnet import check_arch
from trainer.optim import OPTIMIZERS
from trainer.presets import preset


def bool_flag(value: str) -> bool:
    """The seed's bool_flag: true/false, on/off, 1/0."""
    lowered = str(value).lower()
    if lowered in ("true", "on", "1", "yes"):
        return True
    if lowered in ("false", "off", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# name: (type, nargs, seed default, help)
FLAGS: dict[str, tuple[Any, str | None, Any, str]] = {
    "data_path": (str, None, "/path/to/imagenet", "image folder or staged dataset (any fsspec URL)"),
    "nmb_crops": (int, "+", [2], "number of crops per resolution (example: 2 6)"),
    "size_crops": (int, "+", [224], "crop resolutions (example: 224 96)"),
    "min_scale_crops": (float, "+", [0.14], "RandomResizedCrop min scale per resolution"),
    "max_scale_crops": (float, "+", [1.0], "RandomResizedCrop max scale per resolution"),
    "crops_for_assign": (int, "+", [0, 1], "crop ids whose codes are computed"),
    "temperature": (float, None, 0.1, "softmax temperature of the swapped prediction"),
    "epsilon": (float, None, 0.05, "Sinkhorn entropy regularisation"),
    "sinkhorn_iterations": (int, None, 3, "Sinkhorn-Knopp iterations"),
    "feat_dim": (int, None, 128, "embedding dimension"),
    "nmb_prototypes": (int, None, 3000, "number of prototypes"),
    "queue_length": (int, None, 0, "global queue length (0: no queue); a multiple of the global batch"),
    "epoch_queue_starts": (int, None, 15, "epoch from which the queue is used"),
    "epochs": (int, None, 100, "number of epochs"),
    "batch_size": (int, None, 64, "batch size per process"),
    "base_lr": (float, None, 4.8, "base learning rate"),
    "final_lr": (float, None, 0.0, "final learning rate"),
    "freeze_prototypes_niters": (int, None, 313, "iterations during which the prototypes are frozen"),
    "wd": (float, None, 1e-6, "weight decay"),
    "optimizer": (str, None, "lars", "lars: SGD + LARC (the method); adamw: short small-batch runs (CPU demo)"),
    "warmup_epochs": (int, None, 10, "linear warmup epochs"),
    "start_warmup": (float, None, 0.0, "learning rate at the start of warmup"),
    "dist_url": (str, None, "env://", "accepted for compatibility; the environment decides"),
    "world_size": (int, None, -1, "accepted and ignored: WORLD_SIZE from the environment decides"),
    "rank": (int, None, 0, "accepted and ignored: RANK from the environment decides"),
    "local_rank": (int, None, 0, "accepted and ignored: LOCAL_RANK from the environment decides"),
    "arch": (str, None, "resnet50", "trunk: any torchvision ResNet or resnet_tiny"),
    "hidden_mlp": (int, None, 2048, "hidden width of the projection head (0: linear head)"),
    "workers": (int, None, 10, "data loading workers per process"),
    "checkpoint_freq": (int, None, 25, "keep checkpoints/ckp-<epoch>.pth every this many epochs"),
    "use_fp16": (bool_flag, None, True, "mixed precision (torch.autocast) on GPUs"),
    "sync_bn": (str, None, "pytorch", "pytorch|apex (both mean torch SyncBatchNorm on multi-GPU)|none"),
    "syncbn_process_group_size": (int, None, 8, "accepted for compatibility; SyncBN spans all ranks"),
    "dump_path": (str, None, ".", "output location (any fsspec URL); rerun the same command to resume"),
    "seed": (int, None, 31, "seed of every random draw"),
    "run_swav": (bool_flag, None, False, "plain SwAV (no Un-Mix mixtures)"),
    "unmix_prob": (float, None, 0.0, "probability of the global mixture (else region mixture)"),
    "unmix_beta": (float, None, 1.0, "Beta(beta, beta) of the mixing weight"),
    "blur_prob": (float, None, 0.5, "probability of the Gaussian blur of every crop (0 for small images)"),
    # New in unmix-swav
    "device": (str, None, "auto", "auto|cpu|cuda"),
    "amp_dtype": (str, None, "bf16", "bf16|fp16 autocast dtype on GPUs (bf16 where supported)"),
    "aug_backend": (str, None, "device", "device: photometric ops batched on the device; pil: seed-style"),
    "channels_last": (bool_flag, None, True, "channels_last memory format on GPUs"),
    "compile": (bool_flag, None, False, "torch.compile the model"),
    "max_steps": (int, None, 0, "stop after this many steps in total (smoke runs; 0: no limit)"),
    "log_freq": (int, None, 10, "log every this many steps"),
    "checkpoint_every_steps": (int, None, 0, "also checkpoint every this many steps (0: once an epoch)"),
    "knn_eval_path": (str, None, "", "folder with train/ and val/ for a kNN monitor (empty: off)"),
    "knn_freq": (int, None, 1, "run the kNN monitor every this many epochs"),
}
NEW_ONLY = ("config", "preset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=str, default=None, help="YAML file with the same keys as the flags")
    parser.add_argument("--preset", type=str, default=None, help="named recipe (see trainer/presets.py)")
    for name, (kind, nargs, default, help_text) in FLAGS.items():
        parser.add_argument(f"--{name}", type=kind, nargs=nargs, default=None,
                            help=f"{help_text} (default: {default})")


def load_yaml(url: str) -> dict[str, Any]:
    if not storage.exists(url):
        raise UserError(f"--config {url} does not exist")
    try:
        values = yaml.safe_load(storage.read_text(url)) or {}
    except yaml.YAMLError as error:
        raise UserError(f"--config {url} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(values, dict):
        raise UserError(f"--config {url} must hold a mapping of flag names to values")
    unknown = sorted(set(values) - set(FLAGS) - {"preset"})
    if unknown:
        raise UserError(f"--config {url} has unknown keys {unknown}; use the flag names of `pretrain --help`")
    return values


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Merge defaults, preset, config file and explicit flags into one namespace."""
    explicit = {k: v for k, v in vars(args).items() if v is not None and k not in NEW_ONLY}
    from_file = load_yaml(args.config) if args.config else {}
    preset_name = args.preset or from_file.pop("preset", None)
    merged = {name: spec[2] for name, spec in FLAGS.items()}
    if preset_name:
        merged.update(preset(preset_name))
    merged.update(from_file)
    merged.update(explicit)
    merged["preset"] = preset_name
    return argparse.Namespace(**merged)


def validate(cfg: argparse.Namespace, world_size: int) -> None:
    """Refuse bad values before any work, with one line that says what would work."""
    lists = ("nmb_crops", "size_crops", "min_scale_crops", "max_scale_crops")
    lengths = {name: len(getattr(cfg, name)) for name in lists}
    if len(set(lengths.values())) != 1:
        raise UserError("--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need the same "
                        f"number of values, got {lengths}")
    total_crops = sum(cfg.nmb_crops)
    if total_crops < 2 or min(cfg.nmb_crops) < 1:
        raise UserError(f"--nmb_crops {cfg.nmb_crops}: SwAV needs at least 2 crops and each count >= 1")
    for lo, hi in zip(cfg.min_scale_crops, cfg.max_scale_crops, strict=True):
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop scales must satisfy 0 < min <= max <= 1, got min {lo} max {hi}")
    if not cfg.run_swav and total_crops % 2:
        raise UserError(f"Un-Mix mixes crops in pairs but --nmb_crops {cfg.nmb_crops} sums to {total_crops}, "
                        "an odd number; use an even total (e.g. 2 6) or --run_swav true")
    if not cfg.run_swav:
        for pair_start in range(0, total_crops, 2):
            sizes = [size for count, size in zip(cfg.nmb_crops, cfg.size_crops, strict=True)
                     for _ in range(count)]
            if sizes[pair_start] != sizes[pair_start + 1]:
                raise UserError(f"Un-Mix pairs crops of the same resolution, but crops {pair_start} and "
                                f"{pair_start + 1} differ ({sizes[pair_start]} vs {sizes[pair_start + 1]}); "
                                "make every count in --nmb_crops even")
    bad_assign = [c for c in cfg.crops_for_assign if not 0 <= c < total_crops]
    if bad_assign or not cfg.crops_for_assign or len(set(cfg.crops_for_assign)) != len(cfg.crops_for_assign):
        raise UserError(f"--crops_for_assign {cfg.crops_for_assign} must be distinct crop ids in "
                        f"0..{total_crops - 1}")
    check_arch(cfg.arch)
    global_batch = cfg.batch_size * world_size
    if cfg.batch_size < 2:
        raise UserError(f"--batch_size {cfg.batch_size}: use at least 2 (Sinkhorn and BatchNorm need it)")
    if cfg.queue_length < 0 or cfg.queue_length % global_batch:
        lower = cfg.queue_length // global_batch * global_batch
        raise UserError(f"--queue_length {cfg.queue_length} is not a multiple of the global batch "
                        f"{global_batch} (batch_size {cfg.batch_size} x {world_size} processes); use "
                        f"{lower or global_batch} or {lower + global_batch}, or 0 for no queue")
    for name in ("epochs", "nmb_prototypes", "feat_dim", "sinkhorn_iterations", "log_freq", "knn_freq"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("temperature", "epsilon"):
        if not getattr(cfg, name) > 0 or not math.isfinite(getattr(cfg, name)):
            raise UserError(f"--{name} must be a positive number, got {getattr(cfg, name)}")
    if not 0 <= cfg.blur_prob <= 1:
        raise UserError(f"--blur_prob {cfg.blur_prob} is not a probability; use a value in [0, 1]")
    if not 0 <= cfg.unmix_prob <= 1 or cfg.unmix_beta <= 0:
        raise UserError("--unmix_prob must lie in [0, 1] and --unmix_beta be positive")
    if cfg.warmup_epochs > cfg.epochs:
        raise UserError(f"--warmup_epochs {cfg.warmup_epochs} exceeds --epochs {cfg.epochs}")
    choices = {"amp_dtype": ("bf16", "fp16"), "aug_backend": ("device", "pil"),
               "sync_bn": ("pytorch", "apex", "none"), "optimizer": OPTIMIZERS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"--{name} {getattr(cfg, name)!r} is not known; use one of {', '.join(allowed)}")
