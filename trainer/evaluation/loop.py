"""The epoch loop shared by eval-linear and eval-semisup: train, validate, log, checkpoint, resume.

A run resumes from `<dump_path>/checkpoint.pth.tar` at the last finished epoch (the run kit's epoch state,
trainer.run.epoch_state, after trainer.run.resume checked that it belongs to this run); every epoch is an
`eval_epoch` record of the run's metrics.
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
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from trainer import storage
from trainer.data.sources import loader_timeout
from trainer.distributed import DistEnv, all_reduce_sum
from trainer.evaluation.features import shard
from trainer.evaluation.reporting import finish
from trainer.run import epoch_state
from trainer.run.health import LossWatch, TrainingDiverged
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
    classes: list[str]  # the class names, in label order
    extra_results: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None  # files the run writes under dump_path once it may (name -> text)
    # Set when train_set and val_set already hold only this rank's share, in memory (cached features): the
    # sampler (with set_epoch) shuffles that share, val_set is scored whole, and loading stays in-process.
    train_sampler: Sampler | None = None
    divergence_fix: str = "lower --lr"  # the likely cause and remedy when the loss diverges


def _loader(dataset: Dataset, spec: TrainingSpec, sampler=None, generator=None) -> DataLoader:
    workers = 0 if spec.train_sampler is not None else spec.args.workers  # in-memory features: no workers
    return DataLoader(dataset, batch_size=spec.args.batch_size, sampler=sampler, shuffle=False,
                      num_workers=workers, pin_memory=spec.env.device.type == "cuda",
                      generator=generator, timeout=loader_timeout(workers))


def train_batch(spec: TrainingSpec, inputs: torch.Tensor, targets: torch.Tensor, totals: torch.Tensor) -> None:
    """One optimisation step; adds (loss x samples, samples) to `totals` on the device (no host sync)."""
    device = spec.env.device
    inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    loss = F.cross_entropy(spec.logits(inputs), targets)
    spec.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    spec.optimizer.step()
    totals[0] += loss.detach() * len(targets)
    totals[1] += len(targets)


def train_epoch(spec: TrainingSpec, loader: DataLoader, epoch: int) -> float:
    """One pass over the training data; returns the mean loss over all ranks (read once, at the end)."""
    spec.train_mode()
    totals = torch.zeros(2, dtype=torch.float64, device=spec.env.device)
    for inputs, targets in progress(loader, len(loader), f"epoch {epoch + 1}", spec.env.is_main):
        train_batch(spec, inputs, targets, totals)
    all_reduce_sum(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


@torch.no_grad()
def score_batch(spec: TrainingSpec, inputs: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor,
                confusion: torch.Tensor | None = None) -> None:
    """Adds (top-1 hits, top-5 hits, samples) of one batch to `counts`, and (true, predicted) pairs to the
    `confusion` matrix if given, on the device (no host sync)."""
    device = spec.env.device
    inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    scores = spec.logits(inputs)
    hits = scores.topk(min(5, scores.shape[1]), dim=1).indices == targets[:, None]
    counts[0] += hits[:, 0].sum()
    counts[1] += hits.any(dim=1).sum()
    counts[2] += len(targets)
    if confusion is not None:
        confusion.index_put_((targets, scores.argmax(dim=1)), torch.ones_like(targets, dtype=confusion.dtype),
                             accumulate=True)


@torch.no_grad()
def validate(spec: TrainingSpec, loader: DataLoader) -> tuple[float, float, list[list[int]]]:
    """Top-1 and top-5 accuracy (percent) over the whole val set, and its confusion matrix (rows: true class,
    columns: predicted); each rank scores its share."""
    for module in spec.model.modules():
        module.eval()
    device = spec.env.device
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    confusion = torch.zeros(len(spec.classes), len(spec.classes), dtype=torch.float64, device=device)
    for inputs, targets in loader:
        score_batch(spec, inputs, targets, counts, confusion)
    all_reduce_sum(counts)
    all_reduce_sum(confusion)
    top1, top5, total = counts.tolist()
    return 100.0 * top1 / max(total, 1), 100.0 * top5 / max(total, 1), confusion.long().tolist()


def fit(spec: TrainingSpec, session: RunSession) -> dict[str, Any]:
    """Train for args.epochs (resuming if a checkpoint of this run exists) and write the metrics."""
    args, env = spec.args, spec.env
    saved = epoch_state.read(session, spec.identity, upgrade=_from_old_layout)
    session.write_params(vars(args))
    for name, text in (spec.outputs or {}).items():
        if env.is_main:
            storage.write_text(session.url(name), text)
    objects = {"model": spec.model, "optimizer": spec.optimizer, "scheduler": spec.scheduler}
    state = epoch_state.restore(saved, **objects)
    history, start, confusion = state.history, state.epoch, state.extra.get("confusion")

    sampler = spec.train_sampler or DistributedSampler(spec.train_set, num_replicas=env.world_size, rank=env.rank,
                                                       shuffle=True, seed=args.seed)
    generator = torch.Generator()
    train_loader = _loader(spec.train_set, spec, sampler=sampler, generator=generator)
    val_share = spec.val_set if spec.train_sampler is not None else Subset(spec.val_set,
                                                                          shard(len(spec.val_set), env))
    val_loader = _loader(val_share, spec)
    metrics = session.metrics(resume_step=state.step)
    health = LossWatch(spec.divergence_fix)
    for row in history:  # a resumed run judges its whole history
        health.observe(row["loss"], f"epoch {row['epoch']}")
    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        generator.manual_seed(derive_seed(args.seed, epoch, env.rank))
        torch.manual_seed(derive_seed(args.seed, epoch, env.rank, 1))
        lr = spec.optimizer.param_groups[0]["lr"]
        loss = train_epoch(spec, train_loader, epoch)
        spec.scheduler.step()
        try:
            health.observe(loss, f"epoch {epoch + 1}")
        except TrainingDiverged as error:
            if history:
                finish(session, metrics, spec.command, spec.pretrained, history, spec.extra_results,
                       {"status": "diverged", "status_reason": str(error)})
            raise
        top1, top5, confusion = validate(spec, val_loader)
        row = {"epoch": epoch + 1, "top1": top1, "top5": top5, "loss": loss, "lr": lr}
        history.append(row)
        log.info("epoch %d/%d: loss %.4f, val top-1 %.2f%%, top-5 %.2f%% (best top-1 %.2f%%)", epoch + 1,
                 args.epochs, loss, top1, top5, max(r["top1"] for r in history))
        metrics.record("eval_epoch", epoch + 1, row)
        session.check_lock()
        state.epoch = state.step = epoch + 1  # an evaluation's metrics step is its epoch
        state.extra["confusion"] = confusion
        epoch_state.save(session, state, **objects)
        metrics.sync()
    extra = {**(spec.extra_results or {}), "classes": spec.classes, "confusion_matrix": confusion}
    return finish(session, metrics, spec.command, spec.pretrained, history, extra, health.summary())


def _from_old_layout(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before the epoch state: the same keys (`epoch` counted the completed epochs), no step."""
    return {**saved, "step": saved.get("epoch", 0)}
