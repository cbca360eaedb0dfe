"""`unmix-swav export`: the run's trunk (and eval-linear's classifier) as safetensors under torchvision's key
names, config.json and MODEL_CARD.md under --dest.

Every input is read and checked before anything is written, so a refusal (another arch, a head scored on another
trunk, a dump without a head) writes nothing. config.json is written last: a folder with a config.json is a
complete export. See docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from trainer import storage
from trainer.errors import UserError
from trainer.evaluation.common import check_file
from trainer.export.card import render
from trainer.export.inputs import (
    LinearResult,
    Trunk,
    find_evaluations,
    parent,
    read_linear,
    read_manifest_record,
    read_pretraining,
)
from trainer.export.model import architecture, preprocessing, safetensors_bytes
from trainer.models.pretrained import is_random_init, load_pretrained_trunk
from trainer.models.resnet import ARCHS, build_trunk, trunk_state_dict
from trainer.run.session import PARAMS

log = logging.getLogger(__name__)

TRUNK_FILE, CLASSIFIER_FILE, CONFIG_FILE, CARD_FILE = ("trunk.safetensors", "classifier.safetensors", "config.json",
                                                       "MODEL_CARD.md")
EXPORT_FILES = (TRUNK_FILE, CLASSIFIER_FILE, CARD_FILE, CONFIG_FILE)
FORMAT = "unmix-swav-export/1"
# The input size of the trunk-only export's preprocessing: eval-linear's default --image_size.
DEFAULT_IMAGE_SIZE = 224


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True,
                        help="the trunk: backbone.pth or checkpoint.pth.tar of a pretraining run (any URL), a SwAV "
                             "release or a torchvision state dict")
    parser.add_argument("--linear", default="",
                        help="--dump_path of a finished eval-linear run of this trunk: adds classifier.safetensors")
    parser.add_argument("--arch", default="resnet50", choices=list(ARCHS))
    parser.add_argument("--dest", required=True, help="URL of the folder the export is written to")
    parser.add_argument("--license", default="", help="licence of the weights for the model card, e.g. an SPDX id")


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the flags of `unmix-swav export`, for callers without a command line (a pipeline step)."""

    pretrained: str
    arch: str
    dest: str
    linear: str = ""
    license: str = ""


def check_paths(pretrained: str, dest: str) -> None:
    """The checks before any reading of weights: the flags name a weights file and a usable folder."""
    if is_random_init(pretrained):
        raise UserError(f"--pretrained {pretrained!r} names no weights; pass the backbone.pth or "
                        "checkpoint.pth.tar of a pretraining run")
    check_file("--pretrained", pretrained, "pass the backbone.pth or checkpoint.pth.tar of a pretraining run")
    fs, path = storage.filesystem(dest)
    if storage.with_retries(lambda: fs.isfile(path), f"checking {dest}"):
        raise UserError(f"--dest {dest} is a file; pass a folder (it is created if missing)")
    if storage.exists(dest):
        names = storage.with_retries(lambda: fs.ls(path, detail=False), f"listing {dest}")
        foreign = sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in names)
        foreign = [name for name in foreign if name not in EXPORT_FILES]
        if foreign:
            raise UserError(f"--dest {dest} holds other files ({', '.join(foreign[:3])}); pass an empty folder "
                            "or an earlier export's")


def check(args: argparse.Namespace, world_size: int = 1) -> None:
    """The checks `run` makes before any work (launchers call it); none depends on world_size."""
    check_paths(args.pretrained, args.dest)


def file_record(data: bytes, sha256: str) -> dict[str, Any]:
    return {"sha256": sha256, "bytes": len(data)}


def build_export(args: ExportRequest) -> dict[str, bytes]:
    """Every file of the export, in memory, from checked inputs (raises UserError before anything is written)."""
    trunk_model, _ = build_trunk(args.arch)
    report = load_pretrained_trunk(trunk_model, args.pretrained, exact=True)
    trunk = Trunk(url=args.pretrained, file_sha256=report.sha256, trunk_sha256=report.trunk_sha256,
                  source_format=report.source_format)
    linear: LinearResult | None = read_linear(args.linear, args.arch, trunk) if args.linear else None
    weights = trunk_state_dict(trunk_model)
    metadata = {"arch": args.arch, "trunk_sha256": trunk.trunk_sha256}
    files: dict[str, bytes] = {}
    records: dict[str, dict[str, Any]] = {}
    files[TRUNK_FILE], digest = safetensors_bytes(weights, metadata)
    records[TRUNK_FILE] = file_record(files[TRUNK_FILE], digest)
    if linear is not None:
        files[CLASSIFIER_FILE], digest = safetensors_bytes({**weights, **linear.fc}, metadata)
        records[CLASSIFIER_FILE] = file_record(files[CLASSIFIER_FILE], digest)

    pretraining = read_pretraining(trunk)
    config = export_config(args, trunk, linear, records, pretraining is not None)
    data = {"pretraining": (pretraining or {}).get("data_path")}
    if linear is not None:
        data["linear evaluation"] = linear.document["args"].get("data_path")
    manifests = {label: (path, read_manifest_record(path)) for label, path in data.items()}
    evaluations = find_evaluations(trunk, {linear.url: linear.document} if linear else {})
    files[CARD_FILE] = render(config, pretraining, manifests, evaluations, linear.url if linear else None).encode()
    files[CONFIG_FILE] = (json.dumps(config, indent=2) + "\n").encode()
    return files


def export_config(args: ExportRequest, trunk: Trunk, linear: LinearResult | None,
                  records: dict[str, dict[str, Any]], has_run: bool) -> dict[str, Any]:
    source: dict[str, Any] = {
        "pretrained": {"url": trunk.url, "file_sha256": trunk.file_sha256, "trunk_sha256": trunk.trunk_sha256,
                       "format": trunk.source_format},
        "pretraining_run": storage.join(parent(trunk.url), PARAMS) if has_run else None,
        "linear_eval": None}
    if linear is not None:
        document = linear.document
        source["linear_eval"] = {"dump": linear.url, "top1": document["top1"], "top5": document["top5"],
                                 "epoch": document["last"]["epoch"], "image_size": linear.image_size,
                                 "use_bn": bool(document["args"].get("use_bn")),
                                 "data_path": document["args"].get("data_path")}
    return {"format": FORMAT, "arch": args.arch, "architecture": architecture(args.arch),
            "num_classes": len(linear.classes) if linear else None,
            "classes": linear.classes if linear else None,
            "head": ({"pooling": "global average (torchvision's avgpool)", "batchnorm_folded":
                      source["linear_eval"]["use_bn"]} if linear else None),
            "preprocessing": preprocessing(linear.image_size if linear else DEFAULT_IMAGE_SIZE),
            "files": records, "source": source, "license": args.license,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "exported_by": "unmix-swav export"}


def publish(dest: str, files: dict[str, bytes]) -> None:
    """Write the export, config.json last, and remove a classifier an earlier export left that this one lacks."""
    fs, path = storage.filesystem(storage.join(dest, CLASSIFIER_FILE))
    if CLASSIFIER_FILE not in files and storage.exists(storage.join(dest, CLASSIFIER_FILE)):
        storage.with_retries(lambda: fs.rm(path), f"removing the earlier {CLASSIFIER_FILE}")
    for name in sorted(files, key=lambda name: name == CONFIG_FILE):
        storage.atomic_write_bytes(storage.join(dest, name), files[name])


def export_run(request: ExportRequest) -> dict[str, Any]:
    """Check, build and publish the export of `request`; its config.json. Bad input raises UserError before
    anything is written."""
    check_paths(request.pretrained, request.dest)
    started = time.perf_counter()
    files = build_export(request)
    publish(request.dest, files)
    sizes = ", ".join(f"{name} {len(data) / 2**20:.1f} MiB" for name, data in files.items())
    log.info("exported to %s in %.1f s: %s", request.dest, time.perf_counter() - started, sizes)
    return json.loads(files[CONFIG_FILE])


def run(args: argparse.Namespace) -> None:
    export_run(ExportRequest(pretrained=args.pretrained, arch=args.arch, dest=args.dest, linear=args.linear,
                             license=args.license))
