"""Pretraining flags: the seed's names, defaults and meaning, plus presets, YAML configs and validation.

Precedence: seed defaults < --preset < --config FILE.yaml < flags given on the command line. Every flag
is parsed with default None so that "given" can be told from "defaulted".
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
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
    "syncbn_process_group_size": (int, None, 8, "SyncBN shares batch statistics within groups of this many "
                                  "consecutive ranks (8: one node of 8 GPUs); 0 or >= world size: all ranks; "
                                  "1: BatchNorm per GPU"),
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
NEW_ONLY = ("config", "preset", "auto_scale")  # not flags of the run: never merged into it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=str, default=None, help="YAML file with the same keys as the flags")
    parser.add_argument("--preset", type=str, default=None, help="named recipe (see trainer/presets.py)")
    for name, (kind, nargs, default, help_text) in FLAGS.items():
        parser.add_argument(f"--{name}", type=kind, nargs=nargs, default=None,
                            help=f"{help_text} (default: {default})")


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool_flag: "true or false"}


def yaml_item(url: str, key: str, kind: Any, value: Any) -> Any:
    """One YAML value through the flag's own type function, applied to its text as argparse applies it to
    the command line's (so 7.5 is no integer here either)."""
    if value is None:
        raise UserError(f"--config {url}: {key} has no value; give it {TYPE_NAMES[kind]} or remove the key")
    if isinstance(value, (list, dict)):
        raise UserError(f"--config {url}: {key}: {value!r} is a {'list' if isinstance(value, list) else 'mapping'}; "
                        f"--{key} takes one value, {TYPE_NAMES[kind]}")
    try:
        return kind(str(value))
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise UserError(f"--config {url}: {key}: {value!r} is not {TYPE_NAMES[kind]}, the type of --{key}"
                        ) from error


def yaml_value(url: str, key: str, value: Any) -> Any:
    """A list flag takes a YAML list, or a scalar as its one value (as `--nmb_crops 2` gives [2])."""
    kind, nargs = FLAGS[key][:2]
    if nargs != "+":
        return yaml_item(url, key, kind, value)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise UserError(f"--config {url}: {key} is an empty list; --{key} takes one or more values")
    return [yaml_item(url, key, kind, item) for item in items]


def load_yaml(url: str) -> dict[str, Any]:
    if not storage.exists(url):
        raise UserError(f"--config {url} does not exist")
    try:
        values = yaml.safe_load(storage.read_text(url)) or {}
    except yaml.YAMLError as error:
        raise UserError(f"--config {url} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(values, dict):
        raise UserError(f"--config {url} must hold a mapping of flag names to values")
    unknown = sorted(set(map(str, values)) - set(FLAGS) - {"preset"})
    if unknown:
        raise UserError(f"--config {url} has unknown keys {unknown}; use the flag names of `pretrain --help`")
    return {key: yaml_item(url, key, str, value) if key == "preset" else yaml_value(url, key, value)
            for key, value in values.items()}


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


def given_flags(args: argparse.Namespace) -> set[str]:
    """The flags the user gave, on the command line or in the --config file (not those of a preset or defaults)."""
    explicit = {k for k, v in vars(args).items() if v is not None and k in FLAGS}
    return explicit | (set(load_yaml(args.config)) - {"preset"} if args.config else set())


@dataclass(frozen=True)
class Range:
    """The accepted values of a numeric flag: between `low` and `high` (either may be absent), each end
    included unless open; never NaN or infinite. `kind` names the range in messages, `note` explains it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    kind: str = ""
    note: str = ""

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = self.high is None or value < self.high or (value == self.high and not self.high_open)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"a value in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"a value {'>' if self.low_open else '>='} {self.low:g}"
        return f"a value {'<' if self.high_open else '<='} {self.high:g}"


def check_range(name: str, value: float | list[float], accepted: Range) -> None:
    """Refuse `--name value` (every item of a list flag) outside `accepted`, naming the range."""
    for item in value if isinstance(value, list) else [value]:
        if item in accepted:
            continue
        shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        where = f": {item}" if isinstance(value, list) and len(value) > 1 else ""
        problem = f"is not {accepted.kind}" if accepted.kind else "is out of range"
        note = f" ({accepted.note})" if accepted.note else ""
        raise UserError(f"--{name} {shown}{where} {problem}; use {accepted}{note}")


def check_ranges(values: argparse.Namespace, ranges: dict[str, Range]) -> None:
    for name, accepted in ranges.items():
        check_range(name, getattr(values, name), accepted)


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1, kind="a probability")
SCALE = Range(0, 1, low_open=True, kind="a crop scale")

# Every numeric pretraining flag but the ignored ones (world_size, rank, ...); list flags per value.
RANGES: dict[str, Range] = {
    "nmb_crops": AT_LEAST_1,
    "size_crops": Range(16),
    "min_scale_crops": SCALE,
    "max_scale_crops": SCALE,
    "temperature": POSITIVE,
    "epsilon": POSITIVE,
    "sinkhorn_iterations": AT_LEAST_1,
    "feat_dim": AT_LEAST_1,
    "nmb_prototypes": Range(2, note="with one prototype every code is the same and the loss is 0"),
    "queue_length": Range(0, note="0: no queue"),
    "epoch_queue_starts": AT_LEAST_0,
    "epochs": AT_LEAST_1,
    "batch_size": Range(2, note="Sinkhorn and BatchNorm need 2 samples per process"),
    "base_lr": AT_LEAST_0,
    "final_lr": AT_LEAST_0,
    "freeze_prototypes_niters": AT_LEAST_0,
    "wd": AT_LEAST_0,
    "warmup_epochs": AT_LEAST_0,
    "start_warmup": AT_LEAST_0,
    "hidden_mlp": Range(0, note="0: a linear projection head"),
    "workers": Range(0, note="0: load data in the training process"),
    "checkpoint_freq": AT_LEAST_1,
    "unmix_prob": PROBABILITY,
    "unmix_beta": POSITIVE,
    "blur_prob": PROBABILITY,
    "max_steps": Range(0, note="0: no limit"),
    "log_freq": AT_LEAST_1,
    "checkpoint_every_steps": Range(0, note="0: once an epoch"),
    "knn_freq": AT_LEAST_1,
}
CHOICES: dict[str, tuple[str, ...]] = {"amp_dtype": ("bf16", "fp16"), "aug_backend": ("device", "pil"),
                                       "sync_bn": ("pytorch", "apex", "none"), "optimizer": tuple(OPTIMIZERS)}
PROTOTYPES_PER_CLASS = 10  # the method notes: about 10x as many prototypes as classes


def validate(cfg: argparse.Namespace, world_size: int) -> None:
    """Refuse bad values before any work, with one line that says what would work."""
    check_ranges(cfg, RANGES)
    check_arch(cfg.arch)
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"--{name} {getattr(cfg, name)!r} is not known; use one of {', '.join(allowed)}")
    check_crops(cfg)
    check_queue(cfg, world_size)
    if cfg.warmup_epochs > cfg.epochs:
        raise UserError(f"--warmup_epochs {cfg.warmup_epochs} exceeds --epochs {cfg.epochs}; use at most "
                        f"{cfg.epochs}")


def check_crops(cfg: argparse.Namespace) -> None:
    """The multi-crop lists agree with each other, with Un-Mix's pairs and with --crops_for_assign."""
    lists = ("nmb_crops", "size_crops", "min_scale_crops", "max_scale_crops")
    lengths = {name: len(getattr(cfg, name)) for name in lists}
    if len(set(lengths.values())) != 1:
        raise UserError("--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need the same "
                        f"number of values, got {lengths}")
    total_crops = sum(cfg.nmb_crops)
    if total_crops < 2:
        raise UserError(f"--nmb_crops {cfg.nmb_crops}: SwAV needs at least 2 crops in total")
    for resolution, (lo, hi) in enumerate(zip(cfg.min_scale_crops, cfg.max_scale_crops, strict=True)):
        if lo > hi:
            raise UserError(f"--min_scale_crops {lo} exceeds --max_scale_crops {hi} (resolution {resolution}); "
                            "each min must be <= its max")
    if not cfg.run_swav and total_crops % 2:
        raise UserError(f"Un-Mix mixes crops in pairs but --nmb_crops {cfg.nmb_crops} sums to {total_crops}, "
                        "an odd number; use an even total (e.g. 2 6) or --run_swav true")
    if not cfg.run_swav:
        sizes = [size for count, size in zip(cfg.nmb_crops, cfg.size_crops, strict=True) for _ in range(count)]
        for pair_start in range(0, total_crops, 2):
            if sizes[pair_start] != sizes[pair_start + 1]:
                raise UserError(f"Un-Mix pairs crops of the same resolution, but crops {pair_start} and "
                                f"{pair_start + 1} differ ({sizes[pair_start]} vs {sizes[pair_start + 1]}); "
                                "make every count in --nmb_crops even")
    bad_assign = [c for c in cfg.crops_for_assign if not 0 <= c < total_crops]
    if bad_assign or not cfg.crops_for_assign or len(set(cfg.crops_for_assign)) != len(cfg.crops_for_assign):
        raise UserError(f"--crops_for_assign {cfg.crops_for_assign} must be distinct crop ids in "
                        f"0..{total_crops - 1}")


def check_queue(cfg: argparse.Namespace, world_size: int) -> None:
    global_batch = cfg.batch_size * world_size
    if cfg.queue_length % global_batch:
        lower = cfg.queue_length // global_batch * global_batch
        # The scale a recipe was written for (e.g. the seed's 3840 with batch 32 on 8 GPUs): the largest world
        # size that divides this one (fewer nodes) whose global batch divides the queue.
        fits = [size for size in range(world_size - 1, 0, -1)
                if world_size % size == 0 and cfg.queue_length % (cfg.batch_size * size) == 0]
        scale = f", or run it on {fits[0]} processes (global batch {cfg.batch_size * fits[0]})" if fits else ""
        raise UserError(f"--queue_length {cfg.queue_length} is not a multiple of the global batch "
                        f"{global_batch} (batch_size {cfg.batch_size} x {world_size} processes); use "
                        f"{lower or global_batch} or {lower + global_batch}, or 0 for no queue{scale}")


def check_steps_per_epoch(num_images: int, batch_size: int, world_size: int) -> int:
    """The training steps per epoch (the sampler's whole batches per process); refuses a run of none,
    which would otherwise end at once as a "success" with an untrained backbone."""
    steps = num_images // world_size // batch_size
    if steps == 0:
        fits = num_images // world_size
        fix = f"use --batch_size {fits} or less, or add data" if fits >= 2 else "add data"
        raise UserError(f"--data_path has {num_images} images, fewer than one batch per process (--batch_size "
                        f"{batch_size} x {world_size} processes), so no step would run; {fix}")
    return steps


def prototype_count_warning(nmb_prototypes: int, num_classes: int) -> str | None:
    """A warning (not an error: the right count is a recipe choice) when the prototypes are fewer than
    SwAV's rule of thumb, about 10x the classes of the data."""
    wanted = PROTOTYPES_PER_CLASS * num_classes
    if nmb_prototypes >= wanted:
        return None
    return (f"--nmb_prototypes {nmb_prototypes} is below {PROTOTYPES_PER_CLASS}x the {num_classes} classes of "
            f"--data_path; the method notes advise about {wanted} (well above --feat_dim) against collapse")
