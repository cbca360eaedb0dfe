"""`plan_for(cfg, num_nodes, gpus_per_node, gpu)`: the whole plan of a pretraining run before any GPU starts.

The recipe scaled to the global batch (trainer/plan/recipe.py), memory per GPU (memory.py), images/s, time and
cost (throughput.py), the checkpoint interval and the data traffic; `Plan.table()` is what `unmix-swav plan`
prints, `Plan.to_json()` what `--json` prints and what `pretrain --auto_scale` records in the run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from trainer import env
from trainer.plan import gpus, memory, recipe, throughput
from trainer.plan.dataset import dataset_info

log = logging.getLogger("trainer.plan")


@dataclass
class Plan:
    cfg: argparse.Namespace  # the flags with the derived values applied
    num_nodes: int
    gpus_per_node: int
    gpu: gpus.Gpu
    dataset: dict[str, Any]
    derived: list[recipe.Derived]
    memory: memory.MemoryPlan
    speed: throughput.Throughput
    time: throughput.RunTime
    checkpoint: dict[str, Any]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # assumptions the output must say
    warnings: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.world_size

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": {"num_nodes": self.num_nodes, "gpus_per_node": self.gpus_per_node, "gpu": self.gpu.name,
                       "gpu_gib": self.gpu.memory_gib, "batch_size": self.cfg.batch_size,
                       "global_batch": self.global_batch},
            "dataset": self.dataset,
            "derived": {d.flag: d.value for d in self.derived},
            "rules": {d.flag: ("given, kept: " if d.given else "") + d.rule for d in self.derived},
            "given": sorted(d.flag for d in self.derived if d.given),
            "memory": self.memory.to_json(),
            "throughput": self.speed.to_json(),
            "time": self.time.to_json(),
            "checkpoint": self.checkpoint,
            "data": self.data,
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def table(self) -> str:
        m, t, s, c, d = self.memory, self.time, self.speed, self.checkpoint, self.data
        crops = " + ".join(f"{n}x{z}" for n, z in zip(self.cfg.nmb_crops, self.cfg.size_crops, strict=True))
        lines = [f"plan: {self.num_nodes} node(s) x {self.gpus_per_node} {self.gpu.name} = {self.world_size} GPUs, "
                 f"batch {self.cfg.batch_size} per GPU = global batch {self.global_batch}, {self.cfg.epochs} epochs, "
                 f"{self.cfg.arch}, crops {crops}"
                 f"{'' if self.cfg.run_swav else ' + Un-Mix'}",
                 *(f"note: {note}" for note in self.notes),
                 f"data: {self.dataset['source']}", "", "recipe (flag, value, rule):"]
        width = max(len(x.flag) for x in self.derived)
        for x in self.derived:
            lines.append(f"  {x.flag:<{width}}  {x.value:<10.4g}  {'given, kept; ' if x.given else ''}{x.rule}")
        verdict = "fits" if m.fits else "DOES NOT FIT"
        lines += ["", f"memory per GPU: {m.gib_per_gpu:.1f} GiB of {m.gpu_gib:g} GiB ({m.fraction:.0%}): {verdict}; "
                      f"largest per-GPU batch that fits: {m.largest_batch} (model error +-{m.error:.0%})",
                  "  " + ", ".join(f"{name} {gib:.2f}" for name, gib in m.parts.items()),
                  f"throughput: {s.images_per_s_per_gpu:.0f} images/s per GPU, {s.source}: {s.detail}",
                  f"  scaling {s.scaling_efficiency:.2f}: {s.scaling_note}",
                  f"time: {t.hours_per_epoch * 60:.1f} min per epoch, {t.hours:.1f} h in all, {t.gpu_hours:,.0f} "
                  "GPU-hours, " + (f"cost {t.cost:,.0f} at the given price" if t.cost is not None
                                    else "cost: give --price_per_gpu_hour"),
                  f"checkpoint: {c['size_gb']} GB, {c['write_s']} s to write; "
                  + (f"--checkpoint_every_steps {c['every_steps']}: " if c["every_steps"] else "") + c["rule"],
                  f"data: {d['bytes_gb']} GB in {d['shards']} shards of {d['shard_mb']} MB; shard cache "
                  f"{d['cache_per_node_gb']} GB per node; {d['read_mb_per_s_per_node']} MB/s per node; "
                  f"{d['gets_per_s']} GETs/s on S3"]
        if self.warnings:
            lines += ["", "warnings:", *(f"  - {w}" for w in self.warnings)]
        return "\n".join(lines)


def resolve_gpu(name: str | None, memory_gib: float | None, images_per_s: float | None) -> tuple[gpus.Gpu, list[str]]:
    notes = []
    if name is None:
        notes.append(f"--gpu not given: {gpus.DEFAULT_GPU} assumed")
    gpu = gpus.gpu(name or gpus.DEFAULT_GPU)
    if memory_gib:
        gpu = dataclasses.replace(gpu, memory_gib=memory_gib)
        notes.append(f"--gpu_memory_gib {memory_gib:g} replaces the table's memory")
    if images_per_s:
        notes.append(f"--gpu_images_per_s {images_per_s:g} replaces the table's ResNet-50 figure")
    return gpu, notes


def plan_for(cfg: argparse.Namespace, num_nodes: int, gpus_per_node: int, gpu: str | None = None,
             given: frozenset[str] | set[str] = frozenset(), *, gpu_memory_gib: float | None = None,
             gpu_images_per_s: float | None = None, price_per_gpu_hour: float | None = None,
             preemptions_per_node_day: float = 1.0, dataset: dict[str, Any] | None = None,
             measured_file: str | os.PathLike | None = throughput.MEASURED_FILE) -> Plan:
    """The plan of pretraining `cfg` (resolved flags) on num_nodes x gpus_per_node GPUs of kind `gpu`.

    `given` names the flags the user gave (command line or config file): those are kept and checked; every other
    derived flag takes its rule's value. `dataset` (dataset_info) defaults to the data of a given --data_path, else
    ImageNet. The check step calls this for the run's nodes x GPUs and fails on `plan.memory.fits`."""
    gpu_spec, notes = resolve_gpu(gpu, gpu_memory_gib, gpu_images_per_s)
    if dataset is None:
        dataset = dataset_info(cfg.data_path if "data_path" in given else None)
    world_size = num_nodes * gpus_per_node
    global_batch = cfg.batch_size * world_size
    derived = recipe.derive(cfg, set(given), global_batch, dataset["images"], dataset["classes"])
    planned = copy.copy(cfg)
    for item in derived:
        setattr(planned, item.flag, item.value)
    warnings = [item.warning for item in derived if item.warning]
    warnings += [f"{item.flag}: {item.rule}" for item in derived
                 if "EXTRAPOLATED" in item.rule and not item.given and item.flag == "base_lr"]
    step = memory.simulate(planned, world_size, planned.batch_size)
    mixed = bool(planned.use_fp16)
    mem = memory.plan_memory(step, planned.batch_size, mixed, world_size, gpu_spec.memory_gib)
    if not mem.fits:
        warnings.append(f"batch {planned.batch_size} per GPU needs {mem.gib_per_gpu:.1f} GiB of the {gpu_spec.name}'s "
                        f"{gpu_spec.memory_gib:g} GiB; use --batch_size {mem.largest_batch} or less"
                        + (" (then rerun plan: the recipe scales with the global batch)" if mem.largest_batch else ""))
    elif mem.fraction > memory.WARN_FRACTION:
        warnings.append(f"batch {planned.batch_size} per GPU uses {mem.fraction:.0%} of the GPU's memory (above "
                        f"{memory.WARN_FRACTION:.0%}; the model's error is +-{mem.error:.0%}): the run may run out of "
                        f"memory; --batch_size {int(mem.largest_batch * memory.WARN_FRACTION)} stays below")
    measured = throughput.read_measured(measured_file, gpu_spec.name)
    speed = throughput.throughput(planned, gpu_spec, num_nodes, gpus_per_node, gpu_images_per_s, measured)
    run = throughput.run_time(speed, world_size, dataset["images"], planned.epochs, global_batch, price_per_gpu_hour)
    steps_per_epoch = max(dataset["images"] // global_batch, 1)
    checkpoint = throughput.checkpoint_plan(step.parameters, planned, run.step_s, steps_per_epoch,
                                            preemptions_per_node_day, num_nodes)
    data = throughput.data_traffic(dataset, run, num_nodes, gpus_per_node)
    return Plan(planned, num_nodes, gpus_per_node, gpu_spec, dataset, derived, mem, speed, run, checkpoint, data,
                notes, warnings)


def apply(cfg: argparse.Namespace, plan: Plan) -> list[str]:
    """Set the derived flags the user did not give on `cfg` (pretrain --auto_scale); the lines to log."""
    lines = []
    for item in plan.derived:
        if not item.given and getattr(cfg, item.flag) != item.value:
            lines.append(f"--{item.flag} {getattr(cfg, item.flag)} -> {item.value:.6g}: {item.rule}")
            setattr(cfg, item.flag, item.value)
    return lines


AUTO_SCALE_HELP = ("derive the recipe flags not given (learning rates, warm-up, queue, prototype freezing and count) "
                   "for this job's global batch and data, as `unmix-swav plan` shows them; the plan goes into "
                   "params.json and a `plan` record of metrics.jsonl")


def planned_config(args: argparse.Namespace, world_size: int, listing: bool = True
                   ) -> tuple[argparse.Namespace, Plan | None]:
    """pretrain's flags resolved (trainer/config.py), auto-scaled with --auto_scale, then validated: (cfg, plan)."""
    from trainer import config

    cfg = config.resolve(args)
    plan = None
    if args.auto_scale:
        validate_for_planning(cfg, world_size, config.given_flags(args))
        plan = auto_scale(cfg, args, world_size, listing)
    config.validate(cfg, world_size)
    return cfg, plan


def validate_for_planning(cfg: argparse.Namespace, world_size: int, given: set[str]) -> None:
    """The flag checks passed before planning builds a model from the flags; a queue length or warm-up the user did
    not give is checked after planning, which derives it anew."""
    from trainer import config

    derived = {flag: 0 for flag in ("queue_length", "warmup_epochs") if flag not in given}
    config.validate(argparse.Namespace(**{**vars(cfg), **derived}), world_size)


def auto_scale(cfg: argparse.Namespace, args: argparse.Namespace, world_size: int, listing: bool = True) -> Plan:
    """`pretrain --auto_scale`: plan the run for this job's nodes x GPUs (torchrun's WORLD_SIZE / LOCAL_WORLD_SIZE,
    this machine's GPU kind) and apply the derived flags the user did not give, in place; logged."""
    from trainer import config

    local = env.current().local_world_size
    gpus_per_node = local if local > 0 and world_size % local == 0 else world_size
    given = config.given_flags(args)
    dataset = dataset_info(cfg.data_path, listing)
    plan = plan_for(cfg, world_size // gpus_per_node, gpus_per_node, gpus.this_machine(), given, dataset=dataset)
    for line in apply(cfg, plan):
        log.info("auto_scale: %s", line)
    for line in plan.warnings:
        log.warning("auto_scale: %s", line)
    return plan
