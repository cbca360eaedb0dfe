"""`unmix-swav eval-knn`: weighted kNN (cosine, k=20, T=0.07) on frozen trunk features; also a monitor.

The pretraining loop calls `knn_evaluate` on every rank every few epochs: each rank encodes a share of
both splits and keeps it (bank and queries are never whole on any rank), the top-k is merged across ranks,
and the trunk is handed back in the train/eval mode it was found in.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer import env as env_vars
from trainer.config import Range, check_range
from trainer.data.sources import open_source
from trainer.distributed import (
    DistEnv,
    all_gather_rows,
    all_reduce_max,
    all_reduce_sum,
)
from trainer.evaluation.common import add_common_arguments, check_common, evaluation_session, prepare_trunk
from trainer.evaluation.features import SourceDataset, aligned_targets, eval_transform, extract_features
from trainer.evaluation.reporting import finish
from trainer.run import epoch_state
from trainer.run.health import HEALTHY
from trainer.run.session import RunSession

log = logging.getLogger(__name__)

QUERY_CHUNK = 1024  # queries scored at once: bounds the (chunk x bank) similarity matrix


@torch.no_grad()
def weighted_knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                       num_classes: int, k: int, temperature: float) -> torch.Tensor:
    """Class scores (Q, C) from one whole bank: each of the k most cosine-similar rows votes exp(sim / T)."""
    return sharded_knn_votes(F.normalize(bank, dim=1), bank_labels, F.normalize(queries, dim=1), num_classes, k,
                             temperature)


@torch.no_grad()
def sharded_knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                      k: int, temperature: float, env: DistEnv | None = None) -> torch.Tensor:
    """Class scores (Q, C) of this rank's L2-normalised `queries` against a bank split across the ranks.

    Each rank holds its own part of the (normalised) bank. Queries go round in chunks: every rank's chunk is
    all-gathered, each rank finds the k best rows of ITS bank part for every gathered query, those candidates
    (similarity, label) are all-gathered, and each rank merges the world_size x k candidates of its own
    queries into the global top k. Per rank this holds its bank part and a (world x chunk) x part similarity
    block, never the whole bank. `k` must not exceed the bank's size over all ranks. Without `env` (or with
    one process) it is the plain top-k vote over `bank`.
    """
    ranks, rank = (env.world_size, env.rank) if env is not None else (1, 0)
    rounds = -(-queries.shape[0] // QUERY_CHUNK)
    if ranks > 1:  # every rank takes part in as many rounds as the largest share of queries needs
        rounds = int(all_reduce_max(torch.tensor([rounds], device=queries.device)).item())
    local_k = min(k, bank.shape[0])
    scores = []
    for index in range(rounds):
        mine = queries[index * QUERY_CHUNK:(index + 1) * QUERY_CHUNK]
        chunk = mine
        if ranks > 1:  # equal shapes for the collectives: pad with zero rows, dropped below
            chunk = torch.cat([mine, mine.new_zeros(QUERY_CHUNK - len(mine), mine.shape[1])])
        gathered = all_gather_rows(chunk)  # (ranks x chunk, D): every rank's queries
        similarity, neighbours = (gathered @ bank.T).topk(local_k, dim=1)
        labels = bank_labels[neighbours]
        if local_k < k:  # a bank part smaller than k: pad with candidates that never win
            similarity = torch.cat([similarity, similarity.new_full((len(gathered), k - local_k), -math.inf)], 1)
            labels = torch.cat([labels, labels.new_zeros(len(gathered), k - local_k)], 1)
        if ranks > 1:  # (source rank, query, k) candidates of this rank's queries -> (query, ranks x k)
            own = slice(rank * QUERY_CHUNK, (rank + 1) * QUERY_CHUNK)
            similarity = all_gather_rows(similarity).view(ranks, -1, k)[:, own].transpose(0, 1).flatten(1)
            labels = all_gather_rows(labels).view(ranks, -1, k)[:, own].transpose(0, 1).flatten(1)
            similarity, best = similarity.topk(k, dim=1)
            labels = labels.gather(1, best)
        rows = len(mine)
        votes = torch.zeros(rows, num_classes, device=queries.device)
        votes.scatter_add_(1, labels[:rows], (similarity[:rows] / temperature).exp())
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
    encodes and keeps a share of both splits, the top-k is merged across ranks and the counts are summed.
    Memory per rank: its bank and query shares (N / W x D float32), on the host and on `device`.
    """
    check_knn(k, temperature)
    train_source = open_source(data_path, split="train")
    val_source = open_source(data_path, split="val")
    transform = eval_transform(image_size)
    bank_set = SourceDataset(train_source, transform)
    val_targets = aligned_targets(train_source.classes, val_source)
    query_set = SourceDataset(val_source, transform, targets=val_targets)
    bank = extract_features(trunk, bank_set, device, batch_size, workers, env, "kNN bank")
    bank_rows, bank_labels = _normalised(bank.features, device), bank.labels.to(device)
    del bank  # on a GPU, the host copy of the share goes now
    queries = extract_features(trunk, query_set, device, batch_size, workers, env, "kNN val")

    # Bank and queries stay split by rank: a distributed top-k merge, then only the counts are summed.
    effective_k = min(k, len(bank_set))
    scores = sharded_knn_votes(bank_rows, bank_labels, _normalised(queries.features, device),
                               len(train_source.classes), effective_k, temperature, env)
    top1, top5 = topk_correct(scores, queries.labels.to(device))
    counts = torch.tensor([top1, top5], dtype=torch.float64, device=device)
    if env is not None and env.is_distributed:
        all_reduce_sum(counts)
    total = len(query_set)
    return {"top1": 100.0 * counts[0].item() / total, "top5": 100.0 * counts[1].item() / total,
            "k": effective_k, "train_samples": len(bank_set), "val_samples": total}


def _normalised(features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows scaled to unit length on `device`, in place (on the CPU in the shard itself: no second copy)."""
    rows = features.to(device, non_blocking=True)
    return rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, batch_size=256)
    group = parser.add_argument_group("kNN")
    group.add_argument("--k", "--nb_knn", dest="k", type=int, default=20, help="neighbours that vote")
    group.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(cosine / T)")


def check(args: argparse.Namespace, world_size: int) -> None:
    """The checks `run_knn` makes before any work (launchers call it before any pod)."""
    check_common(args)
    check_knn(args.k, args.temperature)


def run_knn(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, write metrics.json / TensorBoard / checkpoint (rank 0) and return the results.

    A finished run found under --dump_path (same trunk checksum and settings) is reported, not redone.
    """
    check(args, env_vars.current().world_size)
    with evaluation_session("eval-knn", args) as (env, session):
        return _knn_run(args, env, session)


def _knn_run(args: argparse.Namespace, env: DistEnv, session: RunSession) -> dict[str, Any]:
    trunk, _, pretrained = prepare_trunk(args.arch, args.pretrained, args.seed, env.device)
    identity = {"command": "eval-knn", "arch": args.arch, "data_path": args.data_path,
                "pretrained_sha256": pretrained["sha256"] if pretrained else None,
                "image_size": args.image_size, "k": args.k, "temperature": args.temperature}
    state = epoch_state.restore(epoch_state.read(session, identity, upgrade=_from_old_layout))
    if "results" in state.extra:
        log.info("kNN already evaluated under %s; reporting the stored result", args.dump_path)
        results = state.extra["results"]
    else:
        results = knn_evaluate(trunk, args.data_path, env.device, args.image_size, args.k,
                               args.temperature, args.batch_size, args.workers, env)
    log.info("kNN (k=%d, T=%g): top-1 %.2f%%, top-5 %.2f%% on %d val images", results["k"],
             args.temperature, results["top1"], results["top5"], results["val_samples"])
    session.write_params(vars(args))  # after the data opened and scored: a refused run leaves none
    row = {"epoch": 0, "top1": results["top1"], "top5": results["top5"]}
    epoch_state.save(session, epoch_state.EpochState(epoch=1, history=[row], extra={"results": results}))
    metrics = session.metrics()
    metrics.record("knn", 0, row)
    extra = {key: value for key, value in results.items() if key not in ("top1", "top5")}
    return {**results, **finish(session, metrics, "eval-knn", pretrained, [row], extra, HEALTHY)}


def _from_old_layout(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before the epoch state: {"epoch": 0, "results": ...} once the evaluation ran."""
    return {**saved, "epoch": 1 if "results" in saved else 0, "step": 0, "history": []}


def run(args: argparse.Namespace) -> None:
    run_knn(args)
