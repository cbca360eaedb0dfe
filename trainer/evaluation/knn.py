"""`unmix-swav eval-knn`: weighted kNN (cosine, k=20, T=0.07) on frozen trunk features; also a monitor.

The pretraining loop calls `knn_evaluate` on rank 0 every few epochs: it does no collective operation
unless given a DistEnv, and it hands the trunk back in the train/eval mode it found it in.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainer.config import Range, check_range
from trainer.data.sources import open_source
from trainer.distributed import DistEnv, all_reduce_sum, cleanup, init_distributed
from trainer.evaluation.common import add_common_arguments, check_common, prepare_trunk
from trainer.evaluation.features import SourceDataset, aligned_targets, eval_transform, extract_features
from trainer.evaluation.reporting import CHECKPOINT, finish
from trainer.run.session import RunSession

log = logging.getLogger(__name__)

QUERY_CHUNK = 1024  # queries scored at once: bounds the (chunk x bank) similarity matrix


@torch.no_grad()
def weighted_knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                       num_classes: int, k: int, temperature: float) -> torch.Tensor:
    """Class scores (Q, C): each of the k most cosine-similar bank rows votes exp(similarity / T)."""
    bank = F.normalize(bank, dim=1)
    scores = []
    for chunk in F.normalize(queries, dim=1).split(QUERY_CHUNK):
        similarity, neighbours = (chunk @ bank.T).topk(k, dim=1)
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        votes.scatter_add_(1, bank_labels[neighbours], (similarity / temperature).exp())
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes, device=queries.device)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many rows have the label first, and among the first five (all classes when fewer than five)."""
    ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def check_knn(k: int, temperature: float) -> None:
    """The vote's settings (also the pretraining monitor's), before any feature is computed."""
    check_range("k", k, Range(1, note="the default is 20"))
    check_range("temperature", temperature, Range(0, low_open=True, note="the default is 0.07"))


def knn_evaluate(trunk: nn.Module, data_path: str, device: torch.device, image_size: int = 224, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 256, workers: int = 4,
                 env: DistEnv | None = None) -> dict[str, float]:
    """Top-1 / top-5 (percent) of val images classified by their k nearest train images.

    `trunk` must already be on `device`. With `env` of several ranks, every rank must call this: each
    encodes a share of both splits and the counts are all-reduced.
    """
    check_knn(k, temperature)
    train_source = open_source(data_path, split="train")
    val_source = open_source(data_path, split="val")
    transform = eval_transform(image_size)
    bank_set = SourceDataset(train_source, transform)
    val_targets = aligned_targets(train_source.classes, val_source)
    query_set = SourceDataset(val_source, transform, targets=val_targets)
    bank, bank_labels = extract_features(trunk, bank_set, device, batch_size, workers, env, "kNN bank")
    queries, query_labels = extract_features(trunk, query_set, device, batch_size, workers, env, "kNN val")

    # The bank is whole on every rank; queries are split by rank and only the counts are summed.
    mine = slice(None) if env is None or not env.is_distributed else slice(env.rank, None, env.world_size)
    effective_k = min(k, len(bank_set))
    scores = weighted_knn_votes(bank.to(device), bank_labels.to(device), queries[mine].to(device),
                                len(train_source.classes), effective_k, temperature)
    top1, top5 = topk_correct(scores, query_labels[mine].to(device))
    counts = torch.tensor([top1, top5], dtype=torch.float64, device=device)
    if env is not None and env.is_distributed:
        all_reduce_sum(counts)
    total = len(query_set)
    return {"top1": 100.0 * counts[0].item() / total, "top5": 100.0 * counts[1].item() / total,
            "k": effective_k, "train_samples": len(bank_set), "val_samples": total}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, batch_size=256)
    group = parser.add_argument_group("kNN")
    group.add_argument("--k", "--nb_knn", dest="k", type=int, default=20, help="neighbours that vote")
    group.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(cosine / T)")


def run_knn(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, write metrics.json / TensorBoard / checkpoint (rank 0) and return the results.

    A finished run found under --dump_path (same trunk checksum and settings) is reported, not redone.
    """
    check_common(args)
    check_knn(args.k, args.temperature)
    owns_group = not (dist.is_available() and dist.is_initialized())
    env = init_distributed(args.device)
    try:
        with RunSession("eval-knn", args.dump_path, env) as session:
            return _knn_run(args, env, session)
    finally:
        if owns_group:
            cleanup()


def _knn_run(args: argparse.Namespace, env: DistEnv, session: RunSession) -> dict[str, Any]:
    trunk, _, pretrained = prepare_trunk(args.arch, args.pretrained, args.seed, env.device)
    identity = {"command": "eval-knn", "arch": args.arch, "data_path": args.data_path,
                "pretrained_sha256": pretrained["sha256"] if pretrained else None,
                "image_size": args.image_size, "k": args.k, "temperature": args.temperature}
    state = session.resume(CHECKPOINT, identity)
    if state is not None and "results" in state:
        log.info("kNN already evaluated under %s; reporting the stored result", args.dump_path)
        results = state["results"]
    else:
        results = knn_evaluate(trunk, args.data_path, env.device, args.image_size, args.k,
                               args.temperature, args.batch_size, args.workers, env)
    log.info("kNN (k=%d, T=%g): top-1 %.2f%%, top-5 %.2f%% on %d val images", results["k"],
             args.temperature, results["top1"], results["top5"], results["val_samples"])
    session.write_params(vars(args))  # after the data opened and scored: a refused run leaves none
    if env.is_main:
        session.save(CHECKPOINT, {"epoch": 0, "results": results})
    metrics = session.metrics()
    row = {"epoch": 0, "top1": results["top1"], "top5": results["top5"]}
    metrics.record("knn", 0, row)
    extra = {key: value for key, value in results.items() if key not in ("top1", "top5")}
    return {**results, **finish(session, metrics, "eval-knn", pretrained, [row], extra)}


def run(args: argparse.Namespace) -> None:
    run_knn(args)
