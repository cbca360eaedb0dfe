"""Load a pretrained trunk from any checkpoint format this project meets, or refuse loudly.

Formats: this project's `checkpoint.pth.tar` ({"model": SwAVModel state dict, keys `trunk.*` / `head.*`},
`module.` added under DDP), `backbone.pth` (trunk state dict, torchvision names), the seed's and the
official SwAV releases (`module.`-prefixed, possibly under "state_dict") and torchvision state dicts
(`fc.*` is ignored). Every tensor is shape-checked; a trunk that would stay mostly random is an error,
because an evaluation of a silently random trunk looks like a bad method, not a bad path.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from trainer import storage
from trainer.errors import UserError

log = logging.getLogger(__name__)

# Dict keys under which checkpoints nest their state dict, most specific first.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
HASH_CHUNK_BYTES = 8 << 20
# --pretrained values that mean "no weights": a seeded randomly initialised trunk, the baseline of a result.
RANDOM_INIT = ("", "random", "none")


def is_random_init(url: str) -> bool:
    return url.strip().lower() in RANDOM_INIT


def random_init_record(seed: int) -> dict[str, object]:
    """What metrics.json says of a randomly initialised trunk: a baseline, and the seed that made it."""
    return {"url": "random", "random_init": True, "seed": seed, "sha256": None}
# Parts of pretraining checkpoints that are expected to stay behind (classifier, SwAV head).
NON_TRUNK_PREFIXES = ("fc.", "head.", "projection_head.", "prototypes.")


@dataclass(frozen=True)
class LoadReport:
    loaded: int
    expected: int
    source_format: str
    sha256: str
    trunk_sha256: str  # of the loaded tensors, not the file: one trunk saved in any format has one digest


def file_sha256(url: str) -> str:
    """Streamed checksum of the file at `url`, recorded so every evaluation names the exact weights."""

    def digest() -> str:
        fs, path = storage.filesystem(url)
        hasher = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK_BYTES):
                hasher.update(chunk)
        return hasher.hexdigest()

    return storage.with_retries(digest, f"checksumming {url}")


def _unwrap(checkpoint: object, url: str) -> tuple[dict[str, torch.Tensor], str]:
    """The tensor state dict inside `checkpoint` and the name of the wrapper it came from."""
    if not isinstance(checkpoint, dict):
        raise UserError(f"{url} holds a {type(checkpoint).__name__}, not a state dict; pass a checkpoint "
                        "written by unmix-swav, a SwAV release or a torchvision state dict")
    wrapper = "plain"
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint, wrapper = checkpoint[key], key
            break
    tensors = {key: value for key, value in checkpoint.items()
               if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not tensors:
        raise UserError(f"{url} contains no tensors under any of {', '.join(WRAPPER_KEYS)} or at the top "
                        "level; pass a checkpoint.pth.tar, backbone.pth or a torchvision state dict")
    return tensors, wrapper


def _strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor] | None:
    """Keys under `prefix` with it removed, or None when no key carries it."""
    stripped = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    return stripped or None


def normalise_keys(tensors: dict[str, torch.Tensor], wrapper: str) -> tuple[dict[str, torch.Tensor], str]:
    """Map checkpoint keys onto torchvision trunk names; returns them and a name for the format."""
    ddp = _strip_prefix(tensors, "module.")
    if ddp is not None:
        tensors = ddp
    ours = _strip_prefix(tensors, "trunk.")
    if ours is not None:
        return ours, "unmix-swav checkpoint" + (" (DDP)" if ddp is not None else "")
    if ddp is not None:
        return tensors, "SwAV release (module.)" + (f" under '{wrapper}'" if wrapper != "plain" else "")
    if any(key.startswith("fc.") for key in tensors):
        return tensors, "torchvision state dict"
    return tensors, "trunk state dict (backbone.pth)"


def _is_weight(key: str) -> bool:
    # BatchNorm step counters are not weights and older torchvision releases do not ship them.
    return not key.endswith("num_batches_tracked")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Digest of the weights in `tensors` (name, dtype, shape and values; step counters left out): equal for
    backbone.pth and checkpoint.pth.tar of one run, so a result can be tied to a trunk whatever file held it."""
    hasher = hashlib.sha256()
    for key in sorted(key for key in tensors if _is_weight(key)):
        value = tensors[key].detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{key}|{value.dtype}|{tuple(tensors[key].shape)}\n".encode())
        hasher.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return hasher.hexdigest()


def load_pretrained_trunk(trunk: nn.Module, url: str, min_fraction: float = 0.9, exact: bool = False
                          ) -> LoadReport:
    """Copy the matching tensors of the checkpoint at `url` into `trunk`; refuse when too few match, and with
    `exact` also when any trunk tensor is missing or any checkpoint tensor is left over (another depth)."""
    if exact:
        min_fraction = 1.0
    if not 0.0 < min_fraction <= 1.0:
        raise UserError(f"min_fraction {min_fraction} is outside (0, 1]; 0.9 is the safe default")
    checkpoint = storage.load_torch(url)
    tensors, wrapper = _unwrap(checkpoint, url)
    tensors, source_format = normalise_keys(tensors, wrapper)

    target = trunk.state_dict()
    expected_keys = [key for key in target if _is_weight(key)]
    matched: dict[str, torch.Tensor] = {}
    wrong_shape: list[str] = []
    for key, value in tensors.items():
        if key not in target:
            continue
        if value.shape != target[key].shape:
            wrong_shape.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
            continue
        matched[key] = value
    loaded = sum(1 for key in matched if _is_weight(key))
    expected = len(expected_keys)
    if loaded < min_fraction * expected:
        missing = [key for key in expected_keys if key not in matched][:3]
        detail = f"; shape mismatches e.g. {wrong_shape[0]}" if wrong_shape else ""
        raise UserError(
            f"{url} ({source_format}) matches only {loaded}/{expected} trunk tensors (need "
            f"{min_fraction:.0%}); missing e.g. {', '.join(missing)}{detail}; check --arch against the "
            "architecture the checkpoint was trained with")
    unused = [key for key in tensors if key not in matched and not key.startswith(NON_TRUNK_PREFIXES)]
    if exact and unused:
        raise UserError(f"{url} ({source_format}) holds {len(unused)} trunk tensors that the trunk of this "
                        f"--arch lacks (e.g. {unused[0]}); pass the --arch the checkpoint was trained with")
    trunk.load_state_dict(matched, strict=False)
    report = LoadReport(loaded=loaded, expected=expected, source_format=source_format,
                        sha256=file_sha256(url), trunk_sha256=tensors_sha256(matched))
    log.info("loaded %d/%d trunk tensors from %s (%s, sha256 %s)", loaded, expected, url, source_format,
             report.sha256[:12])
    if unused:
        log.warning("%d tensors of %s were not used (e.g. %s): is --arch the checkpoint's architecture?",
                    len(unused), url, unused[0])
    return report
