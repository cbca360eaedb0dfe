"""`unmix-swav detr`: fine-tune DETR on COCO-format data with the pretrained trunk, report COCO box AP.

The DETR recipe: AdamW (lr 1e-4, backbone 5e-5 here as in the SwAV transfer, weight decay 1e-4), gradient
clipping at 0.1, the lr divided by 10 after `--lr_drop` epochs, auxiliary decoding losses, evaluation
after every epoch. `--batch_size` is per process, as in DETR. One process, or one per GPU/CPU rank under
torchrun or a PyTorchJob (trainer.distributed). After every epoch: `<dump_path>/checkpoint.pth.tar` (the run
kit's epoch state, resumed from automatically; a `checkpoint.pth` of an earlier version is read too),
`metrics.json` and TensorBoard scalars under `tb/`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from transformers import DetrForObjectDetection

from trainer import storage
from trainer.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, Range, check_ranges
from trainer.data.sources import loader_timeout
from trainer.detr.dataset import CocoDetection, check_annotations, collate, load_annotations, num_classes_of
from trainer.detr.evaluator import box_ap, detections
from trainer.detr.loss import SetLoss, install_set_loss, mean_boxes_per_rank
from trainer.detr.model import build_detr
from trainer.distributed import DistEnv, all_reduce_sum, barrier, cleanup, init_distributed
from trainer.errors import UserError
from trainer.evaluation.common import check_file
from trainer.models.pretrained import LoadReport, is_random_init, random_init_record
from trainer.run import epoch_state
from trainer.run.health import LossWatch
from trainer.run.metrics import MetricsLog, write_document
from trainer.run.resume import identity_of, legacy_identity
from trainer.run.session import RunSession
from trainer.seeding import derive_seed

log = logging.getLogger(__name__)
LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
LOG_EVERY_STEPS = 20  # the training loss is read on the host (and recorded) every this many steps
EVAL_FLUSH_BATCHES = 16  # evaluation outputs copied to the host every this many batches
OLD_CHECKPOINT = "checkpoint.pth"  # written before the epoch state; read when no checkpoint.pth.tar exists
# Flags a restart may change without changing the run: the rest make up its identity. The lr schedule steps
# at --lr_drop, not at a fraction of --epochs, so more epochs extend the same run.
RESUME_CHANGEABLE = ("workers", "device", "resume", "dump_path", "epochs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and weights")
    data.add_argument("--coco_path", required=True,
                      help="fsspec URL holding train2017/, val2017/, annotations/instances_{train,val}2017.json")
    data.add_argument("--pretrained", required=True,
                      help="trunk weights (any format the evaluation commands accept), or 'none' for random")
    data.add_argument("--arch", default="resnet50", help="trunk architecture (resnet_tiny for CPU tests)")
    data.add_argument("--num_classes", type=int, default=0,
                      help="classifier size; 0: largest category id + 1 from the annotations (91 for COCO)")
    data.add_argument("--image_size", type=int, default=800,
                      help="shorter image side; every augmentation size scales with it (recipe: 800)")
    data.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    optim = parser.add_argument_group("optimisation (DETR recipe)")
    optim.add_argument("--batch_size", type=int, default=2, help="images per process and step")
    optim.add_argument("--lr", type=float, default=1e-4)
    optim.add_argument("--lr_backbone", type=float, default=5e-5, help="0 freezes the whole backbone")
    optim.add_argument("--weight_decay", type=float, default=1e-4)
    optim.add_argument("--epochs", type=int, default=300)
    optim.add_argument("--lr_drop", type=int, default=200, help="epochs after which the lr is divided by 10")
    optim.add_argument("--clip_max_norm", type=float, default=0.1, help="gradient norm clip; 0 disables")
    model = parser.add_argument_group("transformer")
    model.add_argument("--num_queries", type=int, default=100)
    model.add_argument("--hidden_dim", type=int, default=256)
    model.add_argument("--enc_layers", type=int, default=6)
    model.add_argument("--dec_layers", type=int, default=6)
    model.add_argument("--dim_feedforward", type=int, default=2048)
    model.add_argument("--nheads", type=int, default=8)
    model.add_argument("--dropout", type=float, default=0.1)
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--dump_path", required=True, help="fsspec URL for checkpoints and metrics")
    run_group.add_argument("--resume", default="",
                           help="checkpoint URL to resume from (default: <dump_path>/checkpoint.pth.tar if present)")
    run_group.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run_group.add_argument("--seed", type=int, default=42)


def detr_args(**values: Any) -> argparse.Namespace:
    """The flags as a Namespace (defaults filled in), for callers such as a Kubeflow component."""
    required = [f"--{key}" for key in ("coco_path", "pretrained", "dump_path") if key not in values]
    if required:
        raise UserError(f"DETR needs {', '.join(required)}")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([f"--{key}={values[key]}" for key in ("coco_path", "pretrained", "dump_path")])
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise UserError(f"unknown DETR option(s) {', '.join(unknown)}; known: {', '.join(sorted(vars(args)))}")
    for key, value in values.items():
        setattr(args, key, value)
    return args


RANGES = {
    **dict.fromkeys(("batch_size", "epochs", "lr_drop", "num_queries", "hidden_dim", "enc_layers", "dec_layers",
                     "dim_feedforward", "nheads"), AT_LEAST_1),
    "lr": POSITIVE, "lr_backbone": Range(0, note="0 freezes the backbone"), "weight_decay": AT_LEAST_0,
    "clip_max_norm": Range(0, note="0: no clipping"), "workers": Range(0, note="0: load data in the process"),
    "num_classes": Range(0, note="0: from the annotations"),
    "image_size": Range(32, note="the backbone downsamples 32x"),
    "dropout": Range(0, 1, high_open=True),
}


def validate(args: argparse.Namespace) -> None:
    """Every flag before any work: ranges, then the weights files."""
    check_ranges(args, RANGES)
    if not is_random_init(args.pretrained):
        check_file("--pretrained", args.pretrained, "pass a backbone.pth / checkpoint file, or 'random' for a "
                                                    "randomly initialised baseline")
    if args.resume:
        check_file("--resume", args.resume, "pass a checkpoint.pth.tar written by detr, or leave it empty")


def resolve_num_classes(args: argparse.Namespace, train_annotations: dict[str, Any]) -> int:
    needed = num_classes_of(train_annotations)
    if args.num_classes == 0:
        return needed
    if args.num_classes < needed:
        raise UserError(f"--num_classes {args.num_classes} is too small: the annotations use category id "
                        f"{needed - 1}; pass {needed} or more, or 0 to derive it")
    return args.num_classes


def param_groups(model: DetrForObjectDetection, args: argparse.Namespace) -> list[dict[str, Any]]:
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for name, p in trainable if ".backbone." not in name], "lr": args.lr}]
    backbone = [p for name, p in trainable if ".backbone." in name]
    if backbone:
        groups.append({"params": backbone, "lr": args.lr_backbone})
    return groups


def resume_name(args: argparse.Namespace) -> str:
    """The checkpoint to resume: --resume (which must exist), else <dump_path>/checkpoint.pth.tar if present."""
    if not args.resume:
        return epoch_state.CHECKPOINT
    if not storage.exists(args.resume):
        raise UserError(f"--resume {args.resume} does not exist; pass a checkpoint.pth.tar written by detr")
    return args.resume if "://" in args.resume else os.path.abspath(args.resume)


def run_identity(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    return identity_of({"command": "detr", **vars(args), "num_classes": num_classes}, RESUME_CHANGEABLE)


def _legacy_values(saved: dict[str, Any]) -> dict[str, Any] | None:
    """What a checkpoint written before identities were recorded says about its run."""
    if not isinstance(saved.get("args"), dict):
        return None
    return {"command": "detr", **saved["args"], "num_classes": saved.get("num_classes")}


def _from_old_layout(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before the epoch state: `epoch` was the index of the last finished epoch, the
    scheduler was `lr_scheduler` and the step `global_step`."""
    values = {key: value for key, value in saved.items() if key not in ("lr_scheduler", "global_step")}
    return {**values, "epoch": saved["epoch"] + 1, "step": saved["global_step"], "scheduler": saved["lr_scheduler"]}


def make_loaders(args: argparse.Namespace, env: DistEnv, annotations: dict[str, dict[str, Any]]
                 ) -> tuple[CocoDetection, DistributedSampler, DataLoader, DataLoader]:
    train_set = CocoDetection(args.coco_path, "train", annotations["train"], args.image_size, args.seed, True)
    val_set = CocoDetection(args.coco_path, "val", annotations["val"], args.image_size, args.seed, False)
    if len(train_set) < args.batch_size * env.world_size:
        raise UserError(f"the train split has {len(train_set)} images, fewer than --batch_size "
                        f"{args.batch_size} x {env.world_size} processes; lower --batch_size")
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=args.seed)
    common = {"collate_fn": collate, "num_workers": args.workers, "pin_memory": env.device.type == "cuda",
              "timeout": loader_timeout(args.workers)}
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True, **common)
    # Each rank evaluates a disjoint share, without the duplicates a padding sampler would add.
    val_share = Subset(val_set, range(env.rank, len(val_set), env.world_size))
    val_loader = DataLoader(val_share, batch_size=args.batch_size, shuffle=False, **common)
    return train_set, sampler, train_loader, val_loader


def _to_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """The batch on `device`; asynchronous copies from the loader's pinned memory."""
    labels = [{key: value.to(device, non_blocking=True) for key, value in target.items()}
              for target in batch["labels"]]
    return (batch["pixel_values"].to(device, non_blocking=True), batch["pixel_mask"].to(device, non_blocking=True),
            labels)


def train_step(model: torch.nn.Module, criterion: SetLoss, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               args: argparse.Namespace, env: DistEnv) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step; the loss and its terms stay on the device. Its one host wait is the Hungarian
    matching's (trainer.detr.loss.match); the box normaliser is all-reduced on the device before the forward."""
    pixel_values, pixel_mask, labels = _to_device(batch, env.device)
    criterion.num_boxes = mean_boxes_per_rank(sum(len(t["class_labels"]) for t in batch["labels"]), env.device)
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    optimizer.zero_grad(set_to_none=True)
    outputs.loss.backward()
    if args.clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
    optimizer.step()
    return outputs.loss.detach(), {key: outputs.loss_dict[key].detach() for key in LOGGED_TERMS}


def _diverged(value: float, where: str) -> UserError:
    return UserError(f"the DETR loss became {value} {where}; the last checkpoint is kept. Lower --lr / "
                     "--lr_backbone or keep --clip_max_norm > 0")


def train_one_epoch(model: torch.nn.Module, detr: DetrForObjectDetection, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, args: argparse.Namespace, env: DistEnv,
                    metrics: MetricsLog, global_step: int, epoch: int) -> tuple[dict[str, float], int]:
    """Mean loss terms over the epoch (all ranks) and the global step after it.

    The terms are summed on the device; the loss is read (a host sync) every LOG_EVERY_STEPS steps and at
    the end of the epoch, when a train_step record is written. A non-finite loss stops the run at the next
    read, before any checkpoint of the epoch is written.
    """
    model.train()
    criterion = install_set_loss(detr)
    sums = torch.zeros(len(LOGGED_TERMS) + 1, dtype=torch.float64, device=env.device)
    steps = 0
    for batch in loader:
        loss, terms = train_step(model, criterion, batch, optimizer, args, env)
        sums += torch.stack([loss, *terms.values()]).double()
        steps += 1
        global_step += 1
        if global_step % LOG_EVERY_STEPS == 0 or steps == len(loader):
            value = loss.item()
            if not math.isfinite(value):
                raise _diverged(value, f"at step {global_step}")
            metrics.record("train_step", global_step, {"epoch": epoch, "loss": value})
    totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([steps])])).tolist()
    if not math.isfinite(totals[0]):
        raise _diverged(totals[0], f"in epoch {epoch} (summed over its steps)")
    count = max(totals[-1], 1.0)
    means = {"train_loss": totals[0] / count}
    means.update({key: totals[1 + n] / count for n, key in enumerate(LOGGED_TERMS)})
    return means, global_step


@torch.no_grad()
def evaluate(detr: DetrForObjectDetection, loader: DataLoader, annotations: dict[str, Any],
             env: DistEnv) -> dict[str, float] | None:
    """COCO box AP on the main rank (None on the others), each rank running its share of images.

    Outputs stay on the device and are copied to the host every EVAL_FLUSH_BATCHES batches (one wait per
    flush, not per batch) for the post-processing."""
    detr.eval()
    results: list[dict[str, Any]] = []
    pending: list[tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]] = []

    def flush() -> None:
        if pending:
            logits = torch.cat([item[0] for item in pending]).cpu()
            boxes = torch.cat([item[1] for item in pending]).cpu()
            results.extend(detections(logits, boxes, [target for item in pending for target in item[2]]))
            pending.clear()

    for batch in loader:
        pending.append(eval_step(detr, batch, env))
        if len(pending) >= EVAL_FLUSH_BATCHES:
            flush()
    flush()
    if env.is_distributed:
        shares: list[list[dict[str, Any]] | None] = [None] * env.world_size
        dist.all_gather_object(shares, results)
        results = [record for share in shares for record in share or []]
    return box_ap(annotations, results) if env.is_main else None


def eval_step(detr: DetrForObjectDetection, batch: dict[str, Any], env: DistEnv
              ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """One batch's class logits and boxes, left on the device, with the batch's host-side targets."""
    pixel_values, pixel_mask, _ = _to_device({**batch, "labels": []}, env.device)
    outputs = detr(pixel_values=pixel_values, pixel_mask=pixel_mask)
    return outputs.logits, outputs.pred_boxes, batch["labels"]


def pretrained_summary(args: argparse.Namespace, report: LoadReport | None) -> dict[str, Any]:
    if report is None:
        return random_init_record(args.seed)
    return {"url": args.pretrained, "sha256": report.sha256, "loaded": report.loaded,
            "expected": report.expected, "source_format": report.source_format,
            "trunk_sha256": report.trunk_sha256}


def metrics_document(args: argparse.Namespace, report: LoadReport | None, num_classes: int, env: DistEnv,
                     history: list[dict[str, Any]], health: LossWatch) -> dict[str, Any]:
    return {"command": "detr", **health.summary(), "box_ap": history[-1]["box_ap"] if history else None,
            "epochs_completed": len(history), "num_classes": num_classes, "world_size": env.world_size,
            "pretrained": pretrained_summary(args, report), "history": history, "args": vars(args)}


def _train(args: argparse.Namespace, env: DistEnv, session: RunSession) -> dict[str, Any]:
    annotations = {split: load_annotations(args.coco_path, split) for split in ("train", "val")}
    num_classes = resolve_num_classes(args, annotations["train"])
    identity = run_identity(args, num_classes)
    saved = epoch_state.read(session, identity, resume_name(args), fallbacks=() if args.resume else (OLD_CHECKPOINT,),
                             upgrade=_from_old_layout, map_location=env.device,
                             legacy_identity=legacy_identity(identity, _legacy_values, RESUME_CHANGEABLE))
    session.write_params(vars(args))
    torch.manual_seed(args.seed)  # same initial transformer on every rank (DDP broadcasts rank 0's anyway)
    detr, report = build_detr(args, num_classes)
    detr.to(env.device)
    optimizer = torch.optim.AdamW(param_groups(detr, args), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)
    objects = {"model": detr, "optimizer": optimizer, "scheduler": scheduler}
    state = epoch_state.restore(saved, **objects)
    del saved
    state.extra = {"num_classes": num_classes, "args": vars(args)}  # kept for readers, as before the epoch state
    start_epoch, global_step, history = state.epoch, state.step, state.history
    model = detr
    if env.is_distributed:
        model = DistributedDataParallel(detr, device_ids=[env.device] if env.device.type == "cuda" else None)
    train_set, sampler, train_loader, val_loader = make_loaders(args, env, annotations)
    metrics = session.metrics(resume_step=global_step)
    health = LossWatch("lower --lr / --lr_backbone or keep --clip_max_norm > 0")
    for entry in history:  # a resumed run judges its whole history
        health.observe(entry["train_loss"], f"epoch {entry['epoch'] + 1}")
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        torch.manual_seed(derive_seed(args.seed, env.rank, epoch))  # dropout: reproducible per epoch
        started = time.perf_counter()
        steps_before = global_step
        losses, global_step = train_one_epoch(model, detr, train_loader, optimizer, args, env, metrics,
                                              global_step, epoch)
        train_seconds = time.perf_counter() - started
        health.observe(losses["train_loss"], f"epoch {epoch + 1}")  # every rank: the means are all-reduced
        lrs = scheduler.get_last_lr()
        scheduler.step()
        ap = evaluate(detr, val_loader, annotations["val"], env)
        session.check_lock()
        if not env.is_main:
            continue
        steps = global_step - steps_before
        history.append({"epoch": epoch, **losses, "lr": lrs[0], "lr_backbone": lrs[-1],
                        "steps": steps, "train_seconds": train_seconds,
                        "seconds_per_step": train_seconds / max(steps, 1), "box_ap": ap})
        log.info("epoch %d/%d: loss %.4f, %.3f s/step, box AP %.4f (AP50 %.4f)", epoch + 1, args.epochs,
                 losses["train_loss"], train_seconds / max(steps, 1), ap["AP"], ap["AP50"])
        metrics.record("eval_epoch", global_step, {"epoch": epoch, **losses, **ap})
        state.epoch, state.step = epoch + 1, global_step
        epoch_state.save(session, state, **objects)
        write_document(args.dump_path, metrics_document(args, report, num_classes, env, history, health))
        metrics.sync()
    if history:
        metrics.record("final", global_step, {"AP": history[-1]["box_ap"]["AP"],
                                              "AP50": history[-1]["box_ap"]["AP50"]})
    metrics.close()
    barrier()
    return metrics_document(args, report, num_classes, env, history, health) if env.is_main else {}


def run_detr(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the metrics document on the main rank ({} on the others)."""
    validate(args)
    for split in ("train", "val"):  # before any process group or model (_train reads them again)
        check_annotations(load_annotations(args.coco_path, split), args.coco_path, split)
    env = init_distributed(args.device)
    try:
        with RunSession("detr", args.dump_path, env) as session:
            return _train(args, env, session)
    finally:
        cleanup()


def check(args: argparse.Namespace, world_size: int) -> None:
    """The checks `run_detr` makes before any work (launchers call it before any pod): flags, weights files,
    annotations; none depends on world_size."""
    validate(args)
    for split in ("train", "val"):
        check_annotations(load_annotations(args.coco_path, split), args.coco_path, split)


def run(args: argparse.Namespace) -> None:
    run_detr(args)
