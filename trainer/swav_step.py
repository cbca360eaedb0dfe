"""One SwAV + Un-Mix optimisation step and the state it updates: the model (with SyncBN groups and the
--compile checks), the training state a checkpoint holds, and `train_step(state, ctx, crops, epoch)`.

`trainer.pretrain` runs it in its loop; `trainer.plan.memory` runs it on the meta device to size a GPU's memory.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from trainer.data.photometric import Photometric
from trainer.distributed import DistEnv, gather_objects, syncbn_group
from trainer.errors import UserError
from trainer.models.heads import SwAVHead, SwAVModel
from trainer.models.resnet import build_trunk
from trainer.optim import build_optimizer, learning_rate
from trainer.run.health import LossWatch
from trainer.run.resources import compiler_problem
from trainer.seeding import generator, rng_state
from trainer.swav import EmbeddingQueue, swav_loss
from trainer.unmix import draw_mix, mix_crops, unmix_loss_inputs

log = logging.getLogger("trainer.pretrain")
DIVERGENCE_FIX = "lower --base_lr, keep --amp_dtype bf16, or check the data"


@dataclass
class Schedule:
    iters_per_epoch: int
    total_steps: int


def build_model(cfg: argparse.Namespace, env: DistEnv) -> SwAVModel:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    trunk, feature_dim = build_trunk(cfg.arch)
    model = SwAVModel(trunk, SwAVHead(feature_dim, cfg.hidden_mlp, cfg.feat_dim, cfg.nmb_prototypes))
    if env.is_distributed and env.device.type == "cuda" and cfg.sync_bn != "none":
        model = convert_syncbn(model, cfg.syncbn_process_group_size, env)
    if cfg.compile:
        check_compile(model, env)
    model = model.to(env.device)
    if cfg.channels_last and env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def convert_syncbn(model: nn.Module, group_size: int, env: DistEnv) -> nn.Module:
    """BatchNorm layers as SyncBatchNorm over the groups --syncbn_process_group_size asks for (node-local
    groups of consecutive ranks, as the reference's apex groups); every rank must call this."""
    group, line = syncbn_group(group_size, env)
    log.info(line)
    if group_size == 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)


def check_compile(model: nn.Module, env: DistEnv) -> None:
    """--compile needs a compiler in the image and no SyncBatchNorm in the model: refused with the reason.

    SyncBatchNorm's forward (torch/nn/modules/_functions.py) asks torch.cuda.is_current_stream_capturing(),
    indexes the gathered statistics with a data-dependent mask (a host sync) and calls collectives inside
    an autograd.Function: dynamo breaks the graph there (pytorch#161302) and together with DDP compiled SyncBN
    is reported to fail outright (pytorch#107372). Measured on the CPU (benchmarks/syncbn_compile_probe.py,
    2 gloo ranks, torch 2.14): a ResNet-50 trunk's training forward is 45 graphs (44 breaks) with SyncBN,
    1 graph with BatchNorm.
    """
    problem = compiler_problem(env.device.type)
    if problem:
        raise UserError(f"--compile: {problem}; drop --compile or use an image with a compiler")
    synced = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if synced:
        raise UserError(
            f"--compile with SyncBatchNorm ({synced} layers) is refused: torch.compile breaks the graph at "
            "nn.SyncBatchNorm (measured: a ResNet-50 trunk becomes 45 graphs instead of 1, each pass, each crop "
            "resolution; pytorch#161302), its forward waits for the host at every layer, and compiled SyncBN under "
            "DDP is reported to fail (pytorch#107372). Use --compile with --sync_bn none or "
            "--syncbn_process_group_size 1 (BatchNorm per GPU), or keep SyncBN without --compile")


def autocast_dtype(cfg: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPUs only: bf16 where supported (no loss scaling needed), else fp16."""
    if not cfg.use_fp16 or device.type != "cuda":
        return None
    if cfg.amp_dtype == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def augment_on_device(crops: list[torch.Tensor], photometric: Photometric,
                      step_generator: torch.Generator) -> list[torch.Tensor]:
    """Photometric augmentation of uint8 crops, one batched call per resolution."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, crop in enumerate(crops):
        groups.setdefault(tuple(crop.shape[1:]), []).append(index)
    out: list[torch.Tensor | None] = [None] * len(crops)
    for indices in groups.values():
        augmented = photometric.apply(torch.cat([crops[i] for i in indices]), step_generator)
        for i, chunk in zip(indices, augmented.chunk(len(indices)), strict=True):
            out[i] = chunk
    return out  # type: ignore[return-value]


def forward_loss(model: nn.Module, crops: list[torch.Tensor], cfg: argparse.Namespace,
                 queue_scores: list[torch.Tensor] | None, step_generator: torch.Generator
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float], list[torch.Tensor]]:
    """L_ori (+ lam * L_mix + (1 - lam) * L_mix_rev with Un-Mix); also the original crops' embeddings."""
    loss_args = dict(crops_for_assign=cfg.crops_for_assign, temperature=cfg.temperature,
                     epsilon=cfg.epsilon, sinkhorn_iterations=cfg.sinkhorn_iterations,
                     queue_scores=queue_scores)
    if cfg.run_swav:
        embeddings, scores = model(crops)
        loss = swav_loss(scores, **loss_args)
        return loss, {"loss_ori": loss.detach()}, embeddings
    draw = draw_mix(cfg.unmix_prob, cfg.unmix_beta, step_generator)
    mixtures, lam = mix_crops(crops, draw, step_generator)
    embeddings, scores = model(crops + mixtures)
    original, mixed = scores[:len(crops)], scores[len(crops):]
    loss_ori = swav_loss(original, **loss_args)
    with_mixtures, with_reversed_mixtures = unmix_loss_inputs(original, mixed)
    loss_mix = swav_loss(with_mixtures, **loss_args)
    loss_mix_rev = swav_loss(with_reversed_mixtures, **loss_args)
    loss = loss_ori + lam * loss_mix + (1.0 - lam) * loss_mix_rev
    parts = {"loss_ori": loss_ori.detach(), "loss_mix": loss_mix.detach(),
             "loss_mix_rev": loss_mix_rev.detach(), "lam": lam}
    return loss, parts, embeddings[:len(crops)]


@dataclass
class TrainingState:
    """Everything a checkpoint holds; saved and restored whole."""

    model: SwAVModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    queue: EmbeddingQueue | None
    schedule: Schedule
    step: int = 0
    skipped_files: int = 0
    epoch_loss: list[torch.Tensor] = field(default_factory=list)  # this epoch's L_ori per step, on the device
    health: LossWatch = field(default_factory=lambda: LossWatch(DIVERGENCE_FIX))

    def checkpoint(self, env: DistEnv, args: argparse.Namespace) -> dict | None:
        """The checkpoint, on the main rank (None elsewhere): every rank contributes its queue and RNG."""
        queues = gather_objects(self.queue.state_dict() if self.queue is not None else None)
        rngs = gather_objects(rng_state())
        if not env.is_main:
            return None
        epoch, iteration = divmod(self.step, self.schedule.iters_per_epoch)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": epoch, "iteration": iteration,
                "world_size": env.world_size, "iters_per_epoch": self.schedule.iters_per_epoch,
                "queues": queues, "rng": rngs, "skipped_files": self.skipped_files, "health": asdict(self.health),
                "args": vars(args)}

    def restore(self, saved: dict, env: DistEnv) -> None:
        """Continue from `saved` (a checkpoint of this run: its identity was checked).

        Same world size: every rank gets back its own queue and RNG state and the run continues exactly.
        Another world size (or batch size) changes the steps per epoch: the epoch is kept and the part of it
        already done is rescaled (rounded down: a few samples are seen twice rather than skipped), and the
        queue is re-split across the new ranks when it was full, else it restarts empty.
        """
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        self.skipped_files = int(saved.get("skipped_files", 0))
        if "health" in saved:
            self.health = LossWatch(**saved["health"])
        iters = self.schedule.iters_per_epoch
        saved_iters = saved.get("iters_per_epoch") or iters * env.world_size // saved["world_size"]
        if saved["world_size"] == env.world_size and saved_iters == iters:
            self.step = int(saved["step"])
            torch.set_rng_state(saved["rng"][env.rank]["torch"].cpu())
            if "cuda" in saved["rng"][env.rank] and env.device.type == "cuda":
                torch.cuda.set_rng_state(saved["rng"][env.rank]["cuda"].cpu())
            if self.queue is not None and saved["queues"][env.rank] is not None:
                self.queue.load_state_dict(saved["queues"][env.rank])
        else:
            epoch, iteration = int(saved["epoch"]), int(saved["iteration"])
            self.step = epoch * iters + iteration * iters // saved_iters
            log.warning("the checkpoint was written by %d processes with %d steps per epoch, this run has %d with "
                        "%d: epoch %d continues at iteration %d; %s", saved["world_size"], saved_iters,
                        env.world_size, iters, epoch, self.step - epoch * iters,
                        resplit_queue(self.queue, saved["queues"], env) if self.queue is not None else "no queue")


def resplit_queue(queue: EmbeddingQueue, saved: list[dict | None], env: DistEnv) -> str:
    """Share the saved ranks' full queues among this run's ranks; what the log says about the queue."""
    if any(part is None or part["filled"] < part["embeddings"].shape[1] for part in saved):
        return "the queue restarts empty"
    embeddings = torch.cat([part["embeddings"] for part in saved], dim=1)
    length = queue.embeddings.shape[1]
    if embeddings.shape[1] != length * env.world_size:
        return "the queue restarts empty (its length changed)"
    queue.load_state_dict({"embeddings": embeddings[:, env.rank * length:(env.rank + 1) * length],
                           "filled": length})
    return "the queue was re-split across the new ranks"


def build_state(cfg: argparse.Namespace, env: DistEnv, schedule: Schedule) -> TrainingState:
    model = build_model(cfg, env)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.base_lr, cfg.wd)
    scaler = torch.amp.GradScaler(env.device.type, enabled=autocast_dtype(cfg, env.device) == torch.float16)
    queue = None
    if cfg.queue_length:
        queue = EmbeddingQueue(len(cfg.crops_for_assign), cfg.queue_length // env.world_size, cfg.feat_dim,
                               env.device)
    return TrainingState(model, optimizer, scaler, queue, schedule)


@dataclass
class StepContext:
    """What every step needs besides the state: the wrapped model and the fixed settings."""

    cfg: argparse.Namespace
    env: DistEnv
    forward_model: nn.Module
    photometric: Photometric | None
    amp_dtype: torch.dtype | None


def train_step(state: TrainingState, ctx: StepContext, crops: list[torch.Tensor], epoch: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float], float]:
    """One optimisation step on a batch of crops: (loss, its parts, lr), the loss still on the device."""
    cfg, device, model = ctx.cfg, ctx.env.device, state.model
    lr = learning_rate(state.step, state.schedule.iters_per_epoch, cfg.epochs, cfg.base_lr, cfg.final_lr,
                       cfg.warmup_epochs, cfg.start_warmup)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    model.head.normalize_prototypes()
    step_generator = generator(cfg.seed, ctx.env.rank, state.step)
    crops = [crop.to(device, non_blocking=True) for crop in crops]
    if ctx.photometric is not None:
        crops = augment_on_device(crops, ctx.photometric, step_generator)
    if cfg.channels_last and device.type == "cuda":
        crops = [crop.contiguous(memory_format=torch.channels_last) for crop in crops]
    queue_on = state.queue is not None and epoch >= cfg.epoch_queue_starts
    queue_scores = state.queue.scores(model.head.prototypes.weight) if queue_on else None
    # No autocast context without mixed precision: torch.autocast refuses device types it does not know
    # (the meta device of the GPU-readiness tests) even when disabled.
    autocast = (torch.autocast(device.type, dtype=ctx.amp_dtype) if ctx.amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        loss, parts, embeddings = forward_loss(ctx.forward_model, crops, cfg, queue_scores, step_generator)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if state.step < cfg.freeze_prototypes_niters:
        model.head.prototypes.weight.grad = None
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if queue_on:
        state.queue.push([embeddings[crop_id] for crop_id in cfg.crops_for_assign])
    state.epoch_loss.append(parts["loss_ori"])
    state.step += 1
    return loss, parts, lr
