"""`unmix-swav pretrain`: SwAV + Un-Mix pretraining, from one CPU process to a multinode PyTorchJob.

Read top to bottom: configuration, distributed set-up (environment variables only), data, model,
optimizer, resume, then the loop. Every random draw is derived from (seed, epoch, index, rank) for data
and (seed, rank, step) for the step, so a run resumed from any checkpoint repeats exactly what an
uninterrupted run would have done. Exit codes: 0 done, 2 bad input or divergence, 143 preempted
(SIGTERM: a checkpoint was written; a PyTorchJob restart resumes it), 138 object storage down through
every retry or another rank dead or stalled (a restart resumes from the last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainer import config, storage
from trainer.data.multicrop import MultiCropDataset, crop_specs
from trainer.data.photometric import Photometric
from trainer.data.sampler import ResumableSampler
from trainer.data.sources import open_source
from trainer.distributed import DistEnv, barrier, cleanup, init_distributed
from trainer.errors import UserError
from trainer.models.heads import SwAVHead, SwAVModel
from trainer.models.resnet import build_trunk, trunk_state_dict
from trainer.optim import LARC, build_optimizer, learning_rate
from trainer.runlog import RunLog
from trainer.seeding import generator
from trainer.swav import EmbeddingQueue, swav_loss
from trainer.unmix import draw_mix, mix_crops, unmix_loss_inputs

log = logging.getLogger("trainer.pretrain")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "retryable" for the Training Operator's ExitCode policy
RESTARTABLE_EXIT_CODE = 138  # 128 + SIGUSR1: the ExitCode policy's code for "user-defined retryable"


class TrainingDiverged(UserError):
    """The loss became non-finite; the last good checkpoint is kept."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)


def run(args: argparse.Namespace) -> None:
    cfg = config.resolve(args)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config.validate(cfg, world_size)
    env = init_distributed(cfg.device)
    setup_logging(env.rank)
    try:
        code = train(cfg, env)
    except storage.StorageUnavailable as error:
        code = stop_for_restart(env, f"object storage unavailable: {last_line(error)}")
    except RuntimeError as error:
        if not (env.is_distributed and is_collective_failure(error)):
            raise
        code = stop_for_restart(env, f"a collective operation failed ({last_line(error)}): another rank died or "
                                "stalled past UNMIX_COLLECTIVE_TIMEOUT_MIN; its own log says why")
    finally:
        cleanup()
    if code:
        raise SystemExit(code)


def stop_for_restart(env: DistEnv, reason: str) -> int:
    """One line on stderr for a failure that a restart can cure; the exit code that asks for the restart."""
    print(f"error: rank {env.rank}: {reason}; exiting {RESTARTABLE_EXIT_CODE} so that the job restarts and "
          "resumes from the last checkpoint", file=sys.stderr, flush=True)
    return RESTARTABLE_EXIT_CODE


def is_collective_failure(error: RuntimeError) -> bool:
    """NCCL and the rendezvous store raise torch's DistError; gloo raises plain RuntimeErrors, from a
    torch.distributed call or (DDP's gradient all-reduce) from backward, with transport messages."""
    if isinstance(error, dist.DistError):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    if any("/torch/distributed/" in frame.filename or frame.filename.endswith("/torch/nn/parallel/distributed.py")
           for frame in frames):
        return True
    return any(mark in str(error) for mark in ("gloo", "NCCL", "Connection closed by peer", "Connection reset",
                                                "pair closure", "Timed out"))


def last_line(error: BaseException) -> str:
    """The message of `error` on one line; for an error re-raised from a DataLoader worker (whose message is
    the worker's traceback) its last line, which holds the original message."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if lines[0].startswith("Caught ") else lines[0]


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(message)s", force=True)


class PreemptionFlag:
    """Set by SIGTERM (Kubernetes eviction); the loop checkpoints and exits at the next check."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True



@dataclass
class Schedule:
    iters_per_epoch: int
    total_steps: int


def build_model(cfg: argparse.Namespace, env: DistEnv) -> SwAVModel:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    trunk, feature_dim = build_trunk(cfg.arch)
    model = SwAVModel(trunk, SwAVHead(feature_dim, cfg.hidden_mlp, cfg.feat_dim, cfg.nmb_prototypes))
    if env.is_distributed and env.device.type == "cuda" and cfg.sync_bn != "none":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(env.device)
    if cfg.channels_last and env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


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


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """One small all-reduce at log steps: the preemption flag and the skipped-file count of every rank."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, on every rank (a one-element list in a single process)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(url: str, model: SwAVModel, optimizer: LARC | torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    queue: EmbeddingQueue | None, step: int, schedule: Schedule, cfg: argparse.Namespace,
                    env: DistEnv) -> None:
    """All ranks contribute their queue and RNG state; rank 0 writes one complete object atomically."""
    queues = gather_objects(queue.state_dict() if queue is not None else None)
    rngs = gather_objects(rng_state())
    if env.is_main:
        epoch, iteration = divmod(step, schedule.iters_per_epoch)
        storage.save_torch({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "iteration": iteration,
            "world_size": env.world_size, "iters_per_epoch": schedule.iters_per_epoch, "queues": queues,
            "rng": rngs, "args": vars(cfg),
        }, url)
    barrier()


def restore_checkpoint(url: str, model: SwAVModel, optimizer: LARC | torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler, queue: EmbeddingQueue | None, schedule: Schedule,
                       env: DistEnv) -> int:
    """Load `url` into the training state; the step to continue at.

    Same world size: every rank gets back its own queue and RNG state and the run continues exactly.
    Another world size (or batch size) changes the steps per epoch: the epoch is kept and the part of it
    already done is rescaled (rounded down: a few samples are seen twice rather than skipped), and the
    queue is re-split across the new ranks when it was full, else it restarts empty.
    """
    state = storage.load_torch(url, map_location=env.device)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise UserError(f"checkpoint {url} does not fit this run ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}); resume with the flags it was written with "
                        "(see its params.json) or use another --dump_path") from error
    step = int(state["step"])
    # Checkpoints written before iters_per_epoch was recorded: assume the same batch size.
    saved_iters = state.get("iters_per_epoch") or schedule.iters_per_epoch * env.world_size // state["world_size"]
    same_layout = state["world_size"] == env.world_size and saved_iters == schedule.iters_per_epoch
    if same_layout:
        torch.set_rng_state(state["rng"][env.rank]["torch"].cpu())
        if "cuda" in state["rng"][env.rank] and env.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"][env.rank]["cuda"].cpu())
        if queue is not None and state["queues"][env.rank] is not None:
            queue.load_state_dict(state["queues"][env.rank])
    else:
        epoch, iteration = int(state["epoch"]), int(state["iteration"])
        step = epoch * schedule.iters_per_epoch + iteration * schedule.iters_per_epoch // saved_iters
        log.warning("the checkpoint was written by %d processes with %d steps per epoch, this run has %d with %d: "
                    "epoch %d continues at iteration %d; %s", state["world_size"], saved_iters,
                    env.world_size, schedule.iters_per_epoch, epoch, step - epoch * schedule.iters_per_epoch,
                    resplit_queue(queue, state["queues"], env) if queue is not None else "no queue")
    log.info("resumed from %s at step %d (epoch %d, iteration %d)", url, step,
             *divmod(step, schedule.iters_per_epoch))
    return step


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


def write_params(cfg: argparse.Namespace, env: DistEnv) -> None:
    if env.is_main:
        params = {**vars(cfg), "world_size": env.world_size}
        storage.write_text(storage.join(cfg.dump_path, "params.json"), json.dumps(params, indent=2) + "\n")


def collapse_warning(mean_loss: float, nmb_prototypes: int, epoch: int) -> str | None:
    """SwAV's collapse signature: the loss stuck at ln(K) (uniform codes and predictions)."""
    if abs(mean_loss - math.log(nmb_prototypes)) < 0.01 * math.log(nmb_prototypes):
        return (f"epoch {epoch}: the loss {mean_loss:.3f} stayed at ln(nmb_prototypes) = "
                f"{math.log(nmb_prototypes):.3f}, the signature of collapse. Remedies: --epsilon 0.03, a longer "
                "--freeze_prototypes_niters, a queue (--queue_length), fewer prototypes (about 10x the classes, "
                "but well above --feat_dim), "
                "a larger global batch")
    return None


def train(cfg: argparse.Namespace, env: DistEnv) -> int:
    device = env.device
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed crop shapes: tune conv kernels once
    storage.makedirs(cfg.dump_path)
    write_params(cfg, env)

    # ---- data: uint8 geometric crops from the workers, photometric ops batched on the device
    source = open_source(cfg.data_path)
    specs = crop_specs(cfg.nmb_crops, cfg.size_crops, cfg.min_scale_crops, cfg.max_scale_crops)
    device_photometric = cfg.aug_backend == "device"
    dataset = MultiCropDataset(source, specs, cfg.seed, env.rank, device_photometric=device_photometric,
                               blur_prob=cfg.blur_prob)
    sampler = ResumableSampler([source.shard_of(i) for i in range(len(source))], env.rank, env.world_size,
                               cfg.seed, cfg.batch_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None)
    photometric = Photometric(blur_prob=cfg.blur_prob)
    schedule = Schedule(sampler.batches_per_epoch, sampler.batches_per_epoch * cfg.epochs)
    last_step = min(schedule.total_steps, cfg.max_steps) if cfg.max_steps else schedule.total_steps
    log.info("%d images, %d classes; %d steps per epoch, global batch %d, %d crops%s", len(source),
             len(source.classes), schedule.iters_per_epoch, cfg.batch_size * env.world_size, len(specs),
             "" if cfg.run_swav else f" + {len(specs) // 2} Un-Mix mixtures")

    # ---- model, optimizer, precision
    model = build_model(cfg, env)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.base_lr, cfg.wd)
    amp_dtype = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ddp_model: nn.Module = model
    if env.is_distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    forward_model = torch.compile(ddp_model) if cfg.compile else ddp_model

    queue = None
    if cfg.queue_length:
        queue = EmbeddingQueue(len(cfg.crops_for_assign), cfg.queue_length // env.world_size, cfg.feat_dim,
                               device)

    # ---- resume: the same command with the same --dump_path continues at the next step
    checkpoint_url = storage.join(cfg.dump_path, "checkpoint.pth.tar")
    step = 0
    if storage.exists(checkpoint_url):
        step = restore_checkpoint(checkpoint_url, model, optimizer, scaler, queue, schedule, env)

    runlog = RunLog(cfg.dump_path, start_step=step) if env.is_main else None
    skipped_since_log, skipped_total = 0, 0
    preemption = PreemptionFlag()

    # ---- the loop
    while step < last_step:
        epoch, first_iteration = divmod(step, schedule.iters_per_epoch)
        sampler.set_epoch(epoch, first_iteration)
        queue_on = queue is not None and epoch >= cfg.epoch_queue_starts
        epoch_loss_sum = torch.zeros((), device=device)
        epoch_steps = 0
        window_start, data_time = time.perf_counter(), 0.0
        fetch_start = time.perf_counter()
        for crops, skipped in loader:
            data_time += time.perf_counter() - fetch_start
            skipped_since_log += int(skipped.sum())
            lr = learning_rate(step, schedule.iters_per_epoch, cfg.epochs, cfg.base_lr, cfg.final_lr,
                               cfg.warmup_epochs, cfg.start_warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.head.normalize_prototypes()

            step_generator = generator(cfg.seed, env.rank, step)
            crops = [crop.to(device, non_blocking=True) for crop in crops]
            if device_photometric:
                crops = augment_on_device(crops, photometric, step_generator)
            if cfg.channels_last and device.type == "cuda":
                crops = [crop.contiguous(memory_format=torch.channels_last) for crop in crops]

            queue_scores = queue.scores(model.head.prototypes.weight) if queue_on else None
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, parts, embeddings = forward_loss(forward_model, crops, cfg, queue_scores, step_generator)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if step < cfg.freeze_prototypes_niters:
                model.head.prototypes.weight.grad = None
            scaler.step(optimizer)
            scaler.update()
            if queue_on:
                queue.push([embeddings[crop_id] for crop_id in cfg.crops_for_assign])
            epoch_loss_sum += parts["loss_ori"]
            epoch_steps += 1
            step += 1

            if step % cfg.log_freq == 0 or step == last_step:
                loss_value = loss.item()  # the only host sync of the step, once every log_freq steps
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"the loss became {loss_value} at step {step} (lr {lr:.4g}); stopped without saving, "
                        f"so {checkpoint_url} still holds the last good state. Lower --base_lr, keep "
                        "--amp_dtype bf16, or check the data")
                preempted, skipped_now = sum_across_ranks([float(preemption.requested), skipped_since_log],
                                                           device)
                skipped_since_log, skipped_total = 0, skipped_total + int(skipped_now)
                if skipped_now:
                    log.warning("%d undecodable files skipped since the last log line (%d in this run); their "
                                "paths are in the log above", skipped_now, skipped_total)
                elapsed = time.perf_counter() - window_start
                steps_in_window = (step - 1) % cfg.log_freq + 1
                values = {"epoch": epoch, "iteration": step - epoch * schedule.iters_per_epoch, "step": step,
                          "loss": loss_value, "lr": lr,
                          "images_per_s": steps_in_window * cfg.batch_size * env.world_size / elapsed,
                          "data_time": data_time / steps_in_window, "skipped_files": skipped_total}
                values.update({k: float(v) for k, v in parts.items()})
                if runlog is not None:
                    runlog.log(step, values)
                log.info("epoch %d step %d/%d loss %.4f lr %.4g %.1f img/s data %.3fs", epoch, step, last_step,
                         loss_value, lr, values["images_per_s"], values["data_time"])
                window_start, data_time = time.perf_counter(), 0.0
                if preempted:
                    save_checkpoint(checkpoint_url, model, optimizer, scaler, queue, step, schedule, cfg, env)
                    log.warning("SIGTERM received: checkpoint written at step %d; exiting %d for a restart",
                                step, PREEMPTED_EXIT_CODE)
                    if runlog is not None:
                        runlog.close()
                    return PREEMPTED_EXIT_CODE
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                save_checkpoint(checkpoint_url, model, optimizer, scaler, queue, step, schedule, cfg, env)
                if runlog is not None:
                    runlog.sync()
            if step >= last_step:
                break
            fetch_start = time.perf_counter()

        # ---- end of an epoch (or of a --max_steps run)
        epoch_done = step % schedule.iters_per_epoch == 0
        mean_loss = (epoch_loss_sum / max(epoch_steps, 1)).item()
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"the loss became non-finite in epoch {epoch}; {checkpoint_url} keeps the "
                                   "last good state. Lower --base_lr or keep --amp_dtype bf16")
        save_checkpoint(checkpoint_url, model, optimizer, scaler, queue, step, schedule, cfg, env)
        if env.is_main and (epoch_done and (epoch % cfg.checkpoint_freq == 0 or epoch == cfg.epochs - 1)
                            or step >= last_step):
            storage.save_torch(model.state_dict(),
                               storage.join(cfg.dump_path, "checkpoints", f"ckp-{epoch}.pth"))
        if epoch_done and epoch_steps == schedule.iters_per_epoch:
            warning = collapse_warning(mean_loss, cfg.nmb_prototypes, epoch)
            if warning:
                log.warning(warning)
        if runlog is not None:
            runlog.scalar("train/epoch_loss_ori", mean_loss, step)
        if cfg.knn_eval_path and epoch_done and (epoch + 1) % cfg.knn_freq == 0:
            run_knn_monitor(model.trunk, cfg, env, runlog, step)
        if runlog is not None:
            runlog.sync()

    if env.is_main:
        storage.save_torch(trunk_state_dict(model.trunk), storage.join(cfg.dump_path, "backbone.pth"))
        log.info("done: %s holds checkpoint.pth.tar, backbone.pth, metrics.jsonl, tb/", cfg.dump_path)
    if runlog is not None:
        runlog.close()
    barrier()
    return 0


def run_knn_monitor(trunk: nn.Module, cfg: argparse.Namespace, env: DistEnv, runlog: RunLog | None,
                    step: int) -> None:
    """Rank 0 scores the current trunk with weighted kNN on a held-out folder; the others wait."""
    if env.is_main:
        from trainer.evaluation.knn import knn_evaluate

        result = knn_evaluate(trunk, cfg.knn_eval_path, env.device, image_size=cfg.size_crops[0],
                              workers=min(cfg.workers, 4))
        log.info("kNN monitor at step %d: top-1 %.2f top-5 %.2f", step, result["top1"], result["top5"])
        if runlog is not None:
            runlog.scalar("knn/top1", result["top1"], step)
            runlog.scalar("knn/top5", result["top5"], step)
            runlog.log(step, {"step": step, "knn_top1": result["top1"], "knn_top5": result["top5"]})
    barrier()
