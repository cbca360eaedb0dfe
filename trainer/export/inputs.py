"""What an export reads besides the trunk, each piece checked before anything is written: the eval-linear dump
(its head, classes, validation size and the trunk it scored), the pretraining run's params.json, the data's
manifest and the evaluations of the same trunk beside the pretraining folder."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any

import torch

from trainer import storage
from trainer.data.sources import MANIFEST
from trainer.errors import UserError
from trainer.evaluation.linear import LinearClassifier
from trainer.export.model import fold_head
from trainer.run.epoch_state import CHECKPOINT
from trainer.run.metrics import METRICS_DOCUMENT
from trainer.run.session import PARAMS

log = logging.getLogger(__name__)

EVALUATION_COMMANDS = ("eval-knn", "eval-linear", "eval-semisup", "detr")


@dataclass(frozen=True)
class Trunk:
    """The --pretrained weights: where they came from and their two digests."""

    url: str
    file_sha256: str
    trunk_sha256: str
    source_format: str


@dataclass(frozen=True)
class LinearResult:
    """What eval-linear trained and scored: the head folded into `fc`, in the label order of `classes`."""

    url: str
    fc: dict[str, torch.Tensor]
    classes: list[str]
    image_size: int
    document: dict[str, Any]  # the dump's metrics.json


def parent(url: str) -> str:
    """The folder holding `url` (a local path or an fsspec URL)."""
    scheme, sep, path = url.rpartition("://")
    return f"{scheme}{sep}{posixpath.dirname(path.rstrip('/'))}"


def read_json(url: str) -> dict[str, Any] | None:
    """The JSON object at `url`, or None when it is absent or not a JSON object (a torn or foreign file)."""
    if not storage.exists(url):
        return None
    try:
        value = json.loads(storage.read_text(url))
    except (ValueError, UnicodeDecodeError):
        log.warning("%s is not valid JSON; ignored", url)
        return None
    return value if isinstance(value, dict) else None


def _same_trunk(record: dict[str, Any], trunk: Trunk) -> bool:
    """Whether an evaluation's `pretrained` record names `trunk`: by the tensors' digest, or by the file's for
    results written before trunk digests were recorded."""
    if record.get("trunk_sha256"):
        return record["trunk_sha256"] == trunk.trunk_sha256
    return record.get("sha256") == trunk.file_sha256


def read_linear(url: str, arch: str, trunk: Trunk) -> LinearResult:
    """The finished eval-linear dump at `url` (its folder, or its checkpoint.pth.tar), or a UserError naming
    what makes it unusable: unfinished, another command, another arch or trunk, no head, not global pooling."""
    folder = parent(url) if url.rstrip("/").endswith(CHECKPOINT) else url.rstrip("/")
    document = read_json(storage.join(folder, METRICS_DOCUMENT))
    if document is None:
        raise UserError(f"--linear {url} holds no {METRICS_DOCUMENT}: pass the --dump_path of a finished "
                        "unmix-swav eval-linear run")
    if document.get("command") != "eval-linear":
        raise UserError(f"--linear {url} is the output of {document.get('command')!r}, not eval-linear: pass the "
                        "--dump_path of an eval-linear run (its head sits on the frozen trunk being exported)")
    if not isinstance(document.get("last"), dict) or "top1" not in document:
        raise UserError(f"--linear {url}: {METRICS_DOCUMENT} records no scored epoch; pass the --dump_path of a "
                        "finished eval-linear run")
    if document.get("status", "ok") != "ok":
        raise UserError(f"--linear {url} ended with status {document['status']!r} "
                        f"({document.get('status_reason', 'no reason recorded')}); export a run that finished ok")
    args, record = document.get("args") or {}, document.get("pretrained") or {}
    if args.get("arch") != arch:
        raise UserError(f"--linear {url} evaluated a {args.get('arch')!r} trunk, not --arch {arch}; pass the "
                        "eval-linear run of this trunk")
    if record.get("random_init"):
        raise UserError(f"--linear {url} evaluated a randomly initialised trunk (a baseline), not --pretrained "
                        f"{trunk.url}; pass the eval-linear run of the pretrained trunk")
    if not _same_trunk(record, trunk):
        raise UserError(f"--linear {url} scored another trunk ({record.get('url')!r}, trunk sha256 "
                        f"{str(record.get('trunk_sha256') or record.get('sha256'))[:12]}) than --pretrained "
                        f"{trunk.url} (trunk sha256 {trunk.trunk_sha256[:12]}): its head would sit on the wrong "
                        "trunk; pass the --pretrained that eval-linear run used")
    if args.get("global_pooling") is False:
        raise UserError(f"--linear {url} was trained with --global_pooling false (a head on 2x2 pooled maps), "
                        "which torchvision's ResNet cannot hold (it pools globally before fc); re-run eval-linear "
                        "with --global_pooling true to export a classifier, or export the trunk alone")
    classes = document.get("classes")
    if not isinstance(classes, list) or not classes:
        raise UserError(f"--linear {url}: {METRICS_DOCUMENT} lists no classes; re-run eval-linear with this "
                        "version")
    checkpoint = storage.load_torch(storage.join(folder, CHECKPOINT))
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not {"linear.weight", "linear.bias"} <= set(state):
        raise UserError(f"--linear {url}: {CHECKPOINT} holds no linear head (linear.weight, linear.bias); pass "
                        "the --dump_path of an eval-linear run")
    weight = state["linear.weight"]
    head = LinearClassifier(weight.shape[1], weight.shape[0], use_bn=any(key.startswith("bn.") for key in state))
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"--linear {url}: the head in {CHECKPOINT} does not fit eval-linear's classifier "
                        f"({str(error).splitlines()[0]}); pass the dump of an eval-linear run") from error
    if weight.shape[0] != len(classes):
        raise UserError(f"--linear {url}: the head has {weight.shape[0]} outputs but {METRICS_DOCUMENT} lists "
                        f"{len(classes)} classes; the dump mixes two runs, re-run eval-linear")
    if checkpoint.get("epoch") != document["last"]["epoch"]:
        raise UserError(f"--linear {url}: {CHECKPOINT} is from epoch {checkpoint.get('epoch')} but "
                        f"{METRICS_DOCUMENT} scored epoch {document['last']['epoch']}; the dump mixes two runs, "
                        "re-run eval-linear into an empty --dump_path")
    head.eval()
    return LinearResult(url=folder, fc=fold_head(head), classes=[str(name) for name in classes],
                        image_size=int(args["image_size"]), document=document)


def read_manifest_record(data_path: str | None) -> dict[str, Any] | None:
    """The staged dataset's manifest URL, sha256 and counts, or None when `data_path` is not a staged dataset."""
    if not data_path:
        return None
    url = storage.join(data_path, MANIFEST)
    manifest = read_json(url)
    if manifest is None:
        return None
    data = storage.read_bytes(url)
    splits = {name: split.get("count", split.get("images")) for name, split in manifest.get("splits", {}).items()}
    return {"url": url, "sha256": hashlib.sha256(data).hexdigest(), "classes": len(manifest.get("classes", [])),
            "splits": splits, "format": manifest.get("format")}


def read_pretraining(trunk: Trunk) -> dict[str, Any] | None:
    """params.json of the pretraining run whose folder holds --pretrained, or None (a file from elsewhere)."""
    params = read_json(storage.join(parent(trunk.url), PARAMS))
    return params if params is not None and "data_path" in params else None


def find_evaluations(trunk: Trunk, extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The metrics.json of every evaluation of `trunk` in the run that holds it (the folders beside the
    pretraining folder) plus `extra`, and of their random-init twins (same command, label share and data), by
    the folder that holds each."""
    root = parent(parent(trunk.url))
    fs, path = storage.filesystem(storage.join(root, "*", METRICS_DOCUMENT))
    found = storage.with_retries(lambda: sorted(fs.glob(path)), f"listing {root}")
    documents = dict(extra)
    for match in found:
        url = match if storage.is_local(root) else fs.unstrip_protocol(match)
        document = read_json(url)
        folder = parent(url)
        if (document is not None and document.get("command") in EVALUATION_COMMANDS and folder not in documents
                and document not in documents.values()):  # the --linear dump under another spelling of its URL
            documents[folder] = document
    ours = {url: doc for url, doc in documents.items() if _same_trunk(doc.get("pretrained") or {}, trunk)}
    keys = {evaluation_key(doc) for doc in ours.values()}
    twins = {url: doc for url, doc in documents.items() if (doc.get("pretrained") or {}).get("random_init")
             and evaluation_key(doc) in keys}
    return {**ours, **twins}


def evaluation_key(document: dict[str, Any]) -> tuple[str, Any, Any]:
    """What pairs an evaluation with its random-init twin: the command, its label share and its data."""
    args = document.get("args") or {}
    return (document.get("command", ""), args.get("labels_perc"), args.get("data_path") or args.get("coco_path"))
