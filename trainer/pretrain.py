"""`unmix-swav pretrain`: SwAV + Un-Mix pretraining, from one CPU process to a multinode PyTorchJob.

Read top to bottom: `run` checks the flags and sets up the distributed group; `train` builds data, model
and the training state, resumes it, and runs the loop; `train_step` (trainer/swav_step.py) is one optimisation
step. Every random
draw is derived from (seed, epoch, index, rank) for data and (seed, rank, step) for the step, so a run
resumed from any checkpoint repeats exactly what an uninterrupted run would have done. The run kit
(trainer.run) owns the error boundary, the run lock, the resume check and the metrics: a SIGTERM ends
the run with 143 after a checkpoint, a store outage or a dead rank with 138, bad input with 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainer import config, storage
from trainer import env as env_vars
from trainer.data.multicrop import MultiCropDataset, crop_specs
from trainer.data.photometric import Photometric
from trainer.data.sampler import ResumableSampler
from trainer.data.sources import ImageSource, loader_timeout, open_source
from trainer.data.streaming import read_counts
from trainer.distributed import (
    DistEnv,
    barrier,
    cleanup,
    init_distributed,
    sum_across_ranks,
)
from trainer.errors import Preempted
from trainer.models.resnet import trunk_state_dict
from trainer.plan.planner import AUTO_SCALE_HELP, Plan, planned_config
from trainer.run.health import TrainingDiverged
from trainer.run.metrics import MetricsLog, write_document
from trainer.run.preemption import PreemptionFlag
from trainer.run.resources import size_this_rank
from trainer.run.resume import identity_of, legacy_identity
from trainer.run.session import RunSession
from trainer.swav_step import Schedule, StepContext, TrainingState, autocast_dtype, build_state, train_step

log = logging.getLogger("trainer.pretrain")
CHECKPOINT = "checkpoint.pth.tar"
# Flags a restart may change without changing the run: the rest make up its identity.
RESUME_CHANGEABLE = ("workers", "log_freq", "checkpoint_freq", "checkpoint_every_steps", "knn_eval_path",
                     "knn_freq", "dump_path", "device", "use_fp16", "amp_dtype", "compile", "channels_last",
                     "max_steps", "batch_size", "dist_url", "world_size", "rank", "local_rank", "config", "preset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    parser.add_argument("--auto_scale", action="store_true", help=AUTO_SCALE_HELP)


def check(args: argparse.Namespace, world_size: int) -> None:
    """The checks `run` makes before any work, for `world_size` processes (launchers call it before any pod)."""
    planned_config(args, world_size, listing=False)


def run(args: argparse.Namespace) -> None:
    cfg, plan = planned_config(args, env_vars.current().world_size)
    env = init_distributed(cfg.device)
    try:
        with RunSession("pretrain", cfg.dump_path, env) as session:
            train(cfg, env, session, plan)
    finally:
        cleanup()


def run_identity(cfg: argparse.Namespace) -> dict:
    return identity_of({"command": "pretrain", **vars(cfg)}, RESUME_CHANGEABLE)


def _legacy_values(saved: dict) -> dict | None:
    """What a checkpoint written before identities were recorded says about its run."""
    return {"command": "pretrain", **saved["args"]} if isinstance(saved.get("args"), dict) else None


def collapse_warning(mean_loss: float, nmb_prototypes: int, epoch: int) -> str | None:
    """SwAV's collapse signature: the loss stuck at ln(K) (uniform codes and predictions)."""
    if abs(mean_loss - math.log(nmb_prototypes)) < 0.01 * math.log(nmb_prototypes):
        return (f"epoch {epoch}: the loss {mean_loss:.3f} stayed at ln(nmb_prototypes) = "
                f"{math.log(nmb_prototypes):.3f}, the signature of collapse. Remedies: --epsilon 0.03, a longer "
                "--freeze_prototypes_niters, a queue (--queue_length), fewer prototypes (about 10x the classes, "
                "but well above --feat_dim), "
                "a larger global batch")
    return None


def size_loader(cfg: argparse.Namespace, env: DistEnv) -> None:
    """Loader workers and intra-op threads from the CPUs this pod may use (trainer.run.resources), logged."""
    sizing = size_this_rank(env.device.type == "cuda", cfg.workers)
    cfg.workers = sizing.workers
    if sizing.threads is not None:
        torch.set_num_threads(sizing.threads)
    log.info(sizing.line)


def build_loader(cfg: argparse.Namespace, env: DistEnv, source: ImageSource) -> tuple[DataLoader, ResumableSampler]:
    """uint8 geometric crops from the workers (the photometric ops run batched on the device)."""
    specs = crop_specs(cfg.nmb_crops, cfg.size_crops, cfg.min_scale_crops, cfg.max_scale_crops)
    dataset = MultiCropDataset(source, specs, cfg.seed, env.rank, device_photometric=cfg.aug_backend == "device",
                               blur_prob=cfg.blur_prob)
    sampler = ResumableSampler([source.shard_of(i) for i in range(len(source))], env.rank, env.world_size,
                               cfg.seed, cfg.batch_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=env.device.type == "cuda", drop_last=True,
                        persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None,
                        timeout=loader_timeout(cfg.workers))
    return loader, sampler


class Trainer:
    """The loop of one pretraining run: steps, log lines, checkpoints, the end of each epoch."""

    def __init__(self, cfg: argparse.Namespace, env: DistEnv, session: RunSession, state: TrainingState,
                 ctx: StepContext, metrics: MetricsLog, last_step: int) -> None:
        self.cfg, self.env, self.session, self.state, self.ctx = cfg, env, session, state, ctx
        self.metrics, self.last_step = metrics, last_step
        self.preemption = PreemptionFlag()
        self.last_logged: dict[str, float] = {}  # the last train_step record: metrics.json's final numbers
        self.reads_at_window = read_counts()  # remote GETs and bytes of this process and its loader workers
        self.skipped_since_log = 0
        self.window_start, self.data_time = time.perf_counter(), 0.0

    def save(self) -> None:
        """Checkpoint (all ranks take part, the main rank writes) and publish the metrics with it."""
        self.session.check_lock()
        saved = self.state.checkpoint(self.env, self.cfg)
        if saved is not None:
            self.session.save(CHECKPOINT, saved)
        barrier()
        self.metrics.sync()

    def run(self, loader: DataLoader, sampler: ResumableSampler) -> None:
        try:
            self._loop(loader, sampler)
        finally:
            self.preemption.close()

    def _loop(self, loader: DataLoader, sampler: ResumableSampler) -> None:
        state = self.state
        while state.step < self.last_step:
            epoch, first_iteration = divmod(state.step, state.schedule.iters_per_epoch)
            sampler.set_epoch(epoch, first_iteration)
            state.epoch_loss = []
            self.window_start, self.data_time = time.perf_counter(), 0.0
            for crops, skipped in self.batches(loader):
                self.skipped_since_log += int(skipped.sum())
                loss, parts, lr = train_step(state, self.ctx, crops, epoch)
                if state.step % self.cfg.log_freq == 0 or state.step == self.last_step:
                    self.log_step(epoch, loss, parts, lr)
                elif self.preemption.requested and not self.env.is_distributed:
                    self.stop_for_preemption()
                if self.cfg.checkpoint_every_steps and state.step % self.cfg.checkpoint_every_steps == 0:
                    self.save()
                if state.step >= self.last_step:
                    break
            self.end_epoch(epoch)

    def batches(self, loader: DataLoader) -> Iterator:
        """The loader's batches, with the time spent waiting for them. A SIGTERM while waiting ends the wait:
        one process checkpoints (its state is between two steps); ranks of a group cannot agree on a
        checkpoint while the others are mid-step, so they keep the last one."""
        iterator = iter(loader)
        while True:
            fetch_start = time.perf_counter()
            try:
                with self.preemption.waiting_for_data():
                    batch = next(iterator, None)
            except Preempted:
                if self.env.is_distributed:
                    raise Preempted("SIGTERM while waiting for data; the last checkpoint is kept") from None
                self.stop_for_preemption()
            self.data_time += time.perf_counter() - fetch_start
            if batch is None:
                return
            yield batch

    def log_step(self, epoch: int, loss: torch.Tensor, parts: dict, lr: float) -> None:
        """Every log_freq steps: the one host sync of the step, one small all-reduce, a train_step record."""
        state, cfg = self.state, self.cfg
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"the loss became {loss_value} at step {state.step} (lr {lr:.4g}); stopped without saving, so "
                f"{self.session.url(CHECKPOINT)} still holds the last good state. Lower --base_lr, keep "
                "--amp_dtype bf16, or check the data")
        preempted, skipped_now = sum_across_ranks([float(self.preemption.requested), self.skipped_since_log],
                                                   self.env.device)
        self.skipped_since_log = 0
        state.skipped_files += int(skipped_now)
        if skipped_now:
            log.warning("%d undecodable files skipped since the last log line (%d in this run); their paths are "
                        "in the log above", skipped_now, state.skipped_files)
        steps_in_window = (state.step - 1) % cfg.log_freq + 1
        elapsed = time.perf_counter() - self.window_start
        values = {"epoch": epoch, "iteration": state.step - epoch * state.schedule.iters_per_epoch,
                  "loss": loss_value, "lr": lr,
                  "images_per_s": steps_in_window * cfg.batch_size * self.env.world_size / elapsed,
                  "data_time": self.data_time / steps_in_window, "skipped_files": state.skipped_files,
                  **{k: float(v) for k, v in parts.items()}}
        reads = read_counts()  # this rank's request rate against the store: whole-shard reads keep it low
        values["gets_per_s"] = (reads.requests - self.reads_at_window.requests) / elapsed
        values["read_mb_per_s"] = (reads.bytes - self.reads_at_window.bytes) / 2**20 / elapsed
        self.reads_at_window = reads
        self.metrics.record("train_step", state.step, values)
        self.last_logged = {"step": state.step, **values}
        log.info("epoch %d step %d/%d loss %.4f lr %.4g %.1f img/s data %.3fs", epoch, state.step, self.last_step,
                 loss_value, lr, values["images_per_s"], values["data_time"])
        self.window_start, self.data_time = time.perf_counter(), 0.0
        if preempted:
            self.stop_for_preemption()

    def stop_for_preemption(self) -> None:
        self.save()
        raise Preempted(f"SIGTERM received: checkpoint written at step {self.state.step}; a restart of the same "
                        "command resumes from it")

    def end_epoch(self, epoch: int) -> None:
        """Checkpoint, keep ckp-<epoch>.pth every checkpoint_freq epochs, collapse check, kNN monitor."""
        state, cfg = self.state, self.cfg
        steps = len(state.epoch_loss)
        mean_loss = torch.stack(state.epoch_loss).mean().item() if steps else float("nan")
        if steps:
            state.health.observe(mean_loss, f"epoch {epoch}")
        epoch_done = state.step % state.schedule.iters_per_epoch == 0
        if self.env.is_main and (epoch_done and (epoch % cfg.checkpoint_freq == 0 or epoch == cfg.epochs - 1)
                                 or state.step >= self.last_step):
            storage.save_torch(state.model.state_dict(),
                               self.session.url(f"checkpoints/ckp-{epoch}.pth"))
        if epoch_done and steps == state.schedule.iters_per_epoch:
            warning = collapse_warning(mean_loss, cfg.nmb_prototypes, epoch)
            if warning:
                log.warning(warning)
                state.health.flag("collapsed", warning)
        if steps:
            self.metrics.record("epoch", state.step, {"epoch": epoch, "loss_ori": mean_loss, "steps": steps})
        if cfg.knn_eval_path and epoch_done and (epoch + 1) % cfg.knn_freq == 0:
            run_knn_monitor(state.model.trunk, cfg, self.env, self.metrics, state.step)
        self.save()


def train(cfg: argparse.Namespace, env: DistEnv, session: RunSession, plan: Plan | None = None) -> None:
    torch.backends.cudnn.benchmark = env.device.type == "cuda"  # fixed crop shapes: tune conv kernels once
    identity = run_identity(cfg)
    saved = session.resume(CHECKPOINT, identity, env.device,
                           legacy_identity(identity, _legacy_values, RESUME_CHANGEABLE))
    source = open_source(cfg.data_path)
    config.check_steps_per_epoch(len(source), cfg.batch_size, env.world_size)
    warning = config.prototype_count_warning(cfg.nmb_prototypes, len(source.classes))
    if warning:
        log.warning(warning)
    size_loader(cfg, env)
    loader, sampler = build_loader(cfg, env, source)
    session.write_params({**vars(cfg), "world_size": env.world_size, **({"plan": plan.to_json()} if plan else {})})
    schedule = Schedule(sampler.batches_per_epoch, sampler.batches_per_epoch * cfg.epochs)
    last_step = min(schedule.total_steps, cfg.max_steps) if cfg.max_steps else schedule.total_steps
    log.info("%d images, %d classes; %d steps per epoch, global batch %d, %d crops%s", len(source),
             len(source.classes), schedule.iters_per_epoch, cfg.batch_size * env.world_size, sum(cfg.nmb_crops),
             "" if cfg.run_swav else f" + {sum(cfg.nmb_crops) // 2} Un-Mix mixtures")

    state = build_state(cfg, env, schedule)
    if saved is not None:
        state.restore(saved, env)
        del saved
        log.info("resumed from %s at step %d (epoch %d, iteration %d)", session.resumed_from, state.step,
                 *divmod(state.step, schedule.iters_per_epoch))
    forward_model: nn.Module = state.model
    if env.is_distributed:
        forward_model = DistributedDataParallel(state.model,
                                                device_ids=[env.device] if env.device.type == "cuda" else None)
    if cfg.compile:
        forward_model = torch.compile(forward_model)
    photometric = Photometric(blur_prob=cfg.blur_prob) if cfg.aug_backend == "device" else None
    ctx = StepContext(cfg, env, forward_model, photometric, autocast_dtype(cfg, env.device))
    # On an exception the metrics are left as the last checkpoint published them: a resume continues there.
    metrics = session.metrics(resume_step=state.step)
    if plan is not None and state.step == 0:
        metrics.record("plan", 0, plan.to_json())
    trainer = Trainer(cfg, env, session, state, ctx, metrics, last_step)
    trainer.run(loader, sampler)
    if env.is_main:
        storage.save_torch(trunk_state_dict(state.model.trunk), session.url("backbone.pth"))
        summary = {"steps": state.step, "skipped_files": state.skipped_files, **state.health.summary()}
        metrics.record("final", state.step, summary)
        write_document(cfg.dump_path, {"command": "pretrain", **summary, "epochs": cfg.epochs,
                                       "world_size": env.world_size, "global_batch": cfg.batch_size * env.world_size,
                                       "last_log": trainer.last_logged, "args": vars(cfg)})
        log.info("done: %s holds checkpoint.pth.tar, backbone.pth, metrics.jsonl, tb/", cfg.dump_path)
    metrics.close()
    barrier()


def run_knn_monitor(trunk: nn.Module, cfg: argparse.Namespace, env: DistEnv, metrics: MetricsLog,
                    step: int) -> None:
    """All ranks score the current trunk together with weighted kNN on a held-out folder: each encodes a
    share of both splits with its own loader workers and the top-k is merged across ranks, so no rank waits
    in a collective while another encodes the whole set."""
    from trainer.evaluation.knn import knn_evaluate

    result = knn_evaluate(trunk, cfg.knn_eval_path, env.device, image_size=cfg.size_crops[0],
                          workers=cfg.workers, env=env)
    log.info("kNN monitor at step %d: top-1 %.2f top-5 %.2f", step, result["top1"], result["top5"])
    metrics.record("knn", step, {"top1": result["top1"], "top5": result["top5"]})
