"""The epoch loop shared by eval-linear and eval-semisup: train, validate, log, checkpoint, resume.

A run resumes from `<dump_path>/checkpoint.pth.tar` at the last finished epoch (trainer.run.resume checks
that the checkpoint belongs to this run); every epoch is an `eval_epoch` record of the run's metrics.
Every random draw of an epoch (shuffle, data-loader worker seeds, augmentations in the main process) is seeded from
(seed, epoch, rank), so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from trainer import storage
from trainer.data.sources import loader_timeout
from trainer.distributed import DistEnv, all_reduce_sum
from trainer.evaluation.features import shard
from trainer.evaluation.reporting import CHECKPOINT, finish
from trainer.run.logs import progress
from trainer.run.session import RunSession
from trainer.seeding import derive_seed

log = logging.getLogger(__name__)


@dataclass
class TrainingSpec:
    """What differs between the evaluations; `fit` does the rest."""

    command: str
    args: argparse.Namespace  # needs dump_path, seed, epochs, batch_size, workers
    env: DistEnv
    identity: dict[str, Any]  # what a checkpoint must match to be resumed
    pretrained: dict[str, Any] | None
    model: nn.Module  # the trainable part, unwrapped: what the checkpoint stores under "model"
    logits: Callable[[torch.Tensor], torch.Tensor]  # inputs -> class scores (through DDP when distributed)
    train_mode: Callable[[], None]  # sets train/eval flags before each epoch (a frozen trunk stays in eval)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_set: Dataset
    val_set: Dataset
    extra_results: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None  # files the run writes under dump_path once it may (name -> text)


def _loader(dataset: Dataset, spec: TrainingSpec, sampler=None, generator=None) -> DataLoader:
    return DataLoader(dataset, batch_size=spec.args.batch_size, sampler=sampler, shuffle=False,
                      num_workers=spec.args.workers, pin_memory=spec.env.device.type == "cuda",
                      generator=generator, timeout=loader_timeout(spec.args.workers))


def train_epoch(spec: TrainingSpec, loader: DataLoader, epoch: int) -> float:
    """One pass over the training data; returns the mean loss over all ranks."""
    spec.train_mode()
    device = spec.env.device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for inputs, targets in progress(loader, len(loader), f"epoch {epoch + 1}", spec.env.is_main):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = F.cross_entropy(spec.logits(inputs), targets)
        spec.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        spec.optimizer.step()
        totals += torch.tensor([loss.item() * len(targets), len(targets)], dtype=torch.float64, device=device)
    all_reduce_sum(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


@torch.no_grad()
def validate(spec: TrainingSpec, loader: DataLoader, total: int) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) over the whole val set; each rank scores its share."""
    for module in spec.model.modules():
        module.eval()
    device = spec.env.device
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        scores = spec.logits(inputs)
        ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
        hits = ranked == targets[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()]).to(torch.float64)
    all_reduce_sum(counts)
    return 100.0 * counts[0].item() / total, 100.0 * counts[1].item() / total


def fit(spec: TrainingSpec, session: RunSession) -> dict[str, Any]:
    """Train for args.epochs (resuming if a checkpoint of this run exists) and write the metrics."""
    args, env = spec.args, spec.env
    history: list[dict[str, float]] = []
    start = 0
    state = session.resume(CHECKPOINT, spec.identity)
    session.write_params(vars(args))
    for name, text in (spec.outputs or {}).items():
        if env.is_main:
            storage.write_text(session.url(name), text)
    if state is not None:
        spec.model.load_state_dict(state["model"])
        spec.optimizer.load_state_dict(state["optimizer"])
        spec.scheduler.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["epoch"])
        log.info("resumed after epoch %d", start)

    sampler = DistributedSampler(spec.train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=args.seed)
    generator = torch.Generator()
    train_loader = _loader(spec.train_set, spec, sampler=sampler, generator=generator)
    val_loader = _loader(Subset(spec.val_set, shard(len(spec.val_set), env)), spec)
    metrics = session.metrics(resume_step=start)
    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        generator.manual_seed(derive_seed(args.seed, epoch, env.rank))
        torch.manual_seed(derive_seed(args.seed, epoch, env.rank, 1))
        lr = spec.optimizer.param_groups[0]["lr"]
        loss = train_epoch(spec, train_loader, epoch)
        spec.scheduler.step()
        top1, top5 = validate(spec, val_loader, len(spec.val_set))
        row = {"epoch": epoch + 1, "top1": top1, "top5": top5, "loss": loss, "lr": lr}
        history.append(row)
        log.info("epoch %d/%d: loss %.4f, val top-1 %.2f%%, top-5 %.2f%% (best top-1 %.2f%%)", epoch + 1,
                 args.epochs, loss, top1, top5, max(r["top1"] for r in history))
        metrics.record("eval_epoch", epoch + 1, row)
        session.check_lock()
        if env.is_main:
            session.save(CHECKPOINT, {"epoch": epoch + 1, "history": history, "model": spec.model.state_dict(),
                                      "optimizer": spec.optimizer.state_dict(),
                                      "scheduler": spec.scheduler.state_dict()})
        metrics.sync()
    return finish(session, metrics, spec.command, spec.pretrained, history, spec.extra_results)
