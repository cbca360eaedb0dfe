"""What a run's report says, read from the folders its steps wrote: each step's metrics.json, metrics.jsonl
and params.json, the summary rows (pretrained beside random init, gain, chance, published figure, status), the
pretraining recipe and the warnings. The steps and their headline numbers come from the catalogue
(trainer/steps.py); figures.py draws the curves, render.py writes the page, build.py is `unmix-swav report`.
"""

from __future__ import annotations

import json
import statistics
import struct
from dataclasses import dataclass, field
from typing import Any

from trainer import steps as catalogue
from trainer import storage
from trainer.config import FLAGS
from trainer.presets import PRESETS, preset
from trainer.reference import Reference, published
from trainer.run.metrics import METRICS_DOCUMENT, read_document, read_records

STEPS = tuple(row.key for row in catalogue.STEPS)
EVALUATIONS = tuple(row.key for row in catalogue.EVALUATIONS)
TITLES = {row.key: row.title for row in catalogue.STEPS}

STATUSES_OK = ("ok",)
# A detection row where neither the pretrained nor the random-init detector found a box: it measures nothing
# (DETR learns to place boxes only after many epochs), so it is neither a gain nor a loss to random init.
NO_BOX = "no_box_found"
# A row where both trunks score 100 (top-5 of a few classes): it cannot tell them apart, a ceiling, not a loss.
SATURATED = "saturated"
WEAK_AP50 = 1.0  # AP50 (x 100) under which a detector has barely started to find boxes: a warning says so
# Flags that name places or are ignored (the environment decides): not part of a recipe.
NOT_RECIPE = frozenset({"data_path", "dump_path", "dist_url", "world_size", "rank", "local_rank"})
# What the "how each evaluation ran" line shows, in this order (keys of the command's echoed args).
SETTINGS = {"k": "k {}", "temperature": "T {}", "epochs": "{} epochs", "lr": "lr {}", "lr_last_layer": "head lr {}",
            "lr_backbone": "backbone lr {}", "batch_size": "batch {} per process", "image_size": "{} px",
            "cached_features": "cached features"}


# ---------------------------------------------------------------------------------------------- reading

@dataclass
class StepRun:
    """One step's dump folder: its metrics.json (None when absent, `problem` says why) and its records."""

    key: str
    url: str
    document: dict[str, Any] | None
    problem: str = ""
    baseline: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # params.json: the settings of a step that did not finish
    _records: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def title(self) -> str:
        return TITLES[self.key] + (" (random init)" if self.baseline else "")

    @property
    def status(self) -> str:
        if self.document is None:
            return "missing"
        return str(self.document.get("status") or "unknown")

    @property
    def reason(self) -> str:
        return str((self.document or {}).get("status_reason") or self.problem)

    @property
    def args(self) -> dict[str, Any]:
        return (self.document or {}).get("args") or self.params

    def records(self, kind: str) -> list[dict[str, Any]]:
        if kind not in self._records:
            self._records[kind] = read_records(self.url, kind)
        return self._records[kind]

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch results: metrics.json's history, else the eval_epoch records (a run stopped early)."""
        return list((self.document or {}).get("history") or self.records("eval_epoch"))


def dump_of(url: str) -> str:
    """A step's dump folder from its dump URL or from the URL of its metrics.json (what the steps return)."""
    url = url.rstrip("/")
    return url[: -len(METRICS_DOCUMENT) - 1] if url.endswith("/" + METRICS_DOCUMENT) else url


def load_step(key: str, url: str, baseline: bool = False) -> StepRun:
    dump = dump_of(url)
    if not storage.exists(storage.join(dump, METRICS_DOCUMENT)):
        params_url = storage.join(dump, "params.json")
        try:
            params = json.loads(storage.read_text(params_url)) if storage.exists(params_url) else {}
        except ValueError:
            params = {}
        return StepRun(key, dump, None, f"no {METRICS_DOCUMENT} under {dump}: the step did not finish", baseline,
                       params if isinstance(params, dict) else {})
    try:
        document = read_document(dump)
    except ValueError as error:
        return StepRun(key, dump, None, f"{METRICS_DOCUMENT} under {dump} is not JSON ({error})", baseline)
    return StepRun(key, dump, document, "", baseline)


def class_count(run: StepRun, others: list[StepRun]) -> int | None:
    """The number of classes of an evaluation's data: its own metrics.json, another evaluation of the same
    data, or the data's manifest / class folders (one listing, never a walk of the images)."""
    document = run.document or {}
    if document.get("classes"):
        return len(document["classes"])
    if document.get("num_classes"):
        return int(document["num_classes"])
    data = run.args.get("data_path")
    for other in others:
        if other.document and other.document.get("classes") and other.args.get("data_path") == data:
            return len(other.document["classes"])
    return listed_class_count(data) if data else None


def listed_class_count(data_url: str) -> int | None:
    try:
        manifest = storage.join(data_url, "manifest.json")
        if storage.exists(manifest):
            return len(json.loads(storage.read_text(manifest))["classes"])
        fs, path = storage.filesystem(storage.join(data_url, "train"))
        if fs.isdir(path):
            return sum(1 for entry in fs.ls(path, detail=True) if entry["type"] == "directory") or None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def wall_time_s(dump: str) -> float | None:
    """Seconds from the step's first TensorBoard event (its start; restarts add files) to its metrics.json
    (its end), reading only each event file's first record; None when either is missing."""
    try:
        fs, tb = storage.filesystem(storage.join(dump, "tb"))
        starts = []
        for name in fs.ls(tb, detail=False) if fs.isdir(tb) else []:
            if "tfevents" in name:
                with fs.open(name, "rb") as handle:
                    starts.append(_first_event_time(handle.read(4096)))
        fs_doc, doc = storage.filesystem(storage.join(dump, METRICS_DOCUMENT))
        end = _modified(fs_doc.info(doc)) if fs_doc.exists(doc) else None
    except (OSError, ValueError):
        return None
    starts = [start for start in starts if start]
    return end - min(starts) if starts and end and end >= min(starts) else None


def _first_event_time(data: bytes) -> float | None:
    """wall_time of the first record of a TFRecord event file (uint64 length, uint32 crc, an Event proto)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    if len(data) < 12:
        return None
    (length,) = struct.unpack("<Q", data[:8])
    try:
        return Event.FromString(data[12:12 + length]).wall_time or None
    except DecodeError:  # a torn or foreign file: no start time, no wall time
        return None


def _modified(info: dict[str, Any]) -> float | None:
    stamp = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if hasattr(stamp, "timestamp"):
        return stamp.timestamp()
    return float(stamp) if stamp else None


# ---------------------------------------------------------------------------------------------- summary

@dataclass(frozen=True)
class Headline:
    """One number of the summary table: a step's key and the catalogue's headline it shows."""

    step: str
    number: catalogue.Headline

    @property
    def metric(self) -> str:
        return self.number.metric

    @property
    def top_k(self) -> int:
        return self.number.top_k

    def read(self, document: dict[str, Any]) -> float | None:
        """The number from a metrics.json; a fraction (COCO AP, -1 when not computed) as a paper shows it: x 100."""
        value: Any = document
        for part in self.number.field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or not self.number.fraction:
            return value
        return None if value < 0 else 100.0 * value

    @property
    def flat_name(self) -> str:
        """As metric stores want it (kfp Metrics, MLflow): linear_top1, detr_box_AP."""
        return catalogue.step(self.step).slug + "_" + self.metric.replace("-", "").replace(" ", "_")


HEADLINES = tuple(Headline(row.key, number) for row in catalogue.EVALUATIONS for number in row.headlines)


@dataclass
class Row:
    headline: Headline
    title: str
    pretrained: float | None
    random: float | None
    chance: float | None
    published: Reference | None
    status: str
    baseline_status: str | None  # None: no random-init twin
    best: str = ""  # "best 37.5 at epoch 1" when the best epoch beat the last one

    @property
    def gain(self) -> float | None:
        return None if self.pretrained is None or self.random is None else self.pretrained - self.random

    @property
    def below_baseline(self) -> bool:
        return self.gain is not None and self.gain <= 0


def summary_rows(steps: dict[str, StepRun], baselines: dict[str, StepRun]) -> list[Row]:
    pretrain_preset = steps["pretrain"].args.get("preset") if "pretrain" in steps else None
    documented = [run for run in [*steps.values(), *baselines.values()] if run.document]
    rows = []
    for headline in HEADLINES:
        run = steps.get(headline.step)
        if run is None or run.document is None:
            continue
        twin = baselines.get(headline.step)
        value = headline.read(run.document)
        random = headline.read(twin.document) if twin and twin.document else None
        classes = class_count(run, documented) if headline.top_k else None
        chance = min(100.0, 100.0 * headline.top_k / classes) if classes else None
        if chance == 100.0:
            continue  # top-5 of five classes or fewer: always 100
        title = TITLES[headline.step] + (f" (k = {run.document['k']})" if "k" in run.document else "")  # kNN's k
        row = Row(headline, title, value, random, chance, published(pretrain_preset, headline.step)
                  if headline.metric == "top-1" else None, run.status, twin.status if twin else None,
                  _best_note(run, headline))
        if row.status in STATUSES_OK and not headline.top_k and value == 0 and random in (None, 0):
            row.status = NO_BOX
        elif row.status in STATUSES_OK and value == 100.0 and random == 100.0:
            row.status = SATURATED
        elif row.status in STATUSES_OK and row.below_baseline:
            row.status = "below_baseline"
        rows.append(row)
    return rows


def _best_note(run: StepRun, headline: Headline) -> str:
    best, key = (run.document or {}).get("best"), {"top-1": "top1", "top-5": "top5"}.get(headline.metric)
    last = (run.document or {}).get(key) if key else None
    if isinstance(best, dict) and key and last is not None and best.get(key, last) > last:
        return f"best {best[key]:.1f} at epoch {best.get('epoch')}"
    return ""


def evaluation_settings(run: StepRun) -> str:
    args, document = run.args, run.document or {}
    parts = [template.format(args[key]) for key, template in SETTINGS.items()
             if key in args and args[key] not in (None, False, "")]
    if document.get("labelled_samples"):
        parts.append(f"{document['labelled_samples']} labelled images")
    if catalogue.step(run.key).command == "eval-knn" and document.get("train_samples"):
        parts.append(f"{document['train_samples']} train / {document.get('val_samples')} val images")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- recipe

def differing_flags(args: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(flag, value, the preset's value or the seed default) for every recipe flag the run changed."""
    base = {name: spec[2] for name, spec in FLAGS.items()}
    if args.get("preset") in PRESETS:
        base.update(preset(args["preset"]))
    return [(name, args[name], base[name]) for name in FLAGS
            if name not in NOT_RECIPE and name in args and args[name] != base[name]]


def _crops(args: dict[str, Any]) -> str:
    groups = zip(args.get("nmb_crops") or [], args.get("size_crops") or [], args.get("min_scale_crops") or [],
                 args.get("max_scale_crops") or [], strict=False)
    return " + ".join(f"{count}×{size} px (scale {low:g}–{high:g})" for count, size, low, high in groups)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "not known"
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{int(minutes // 60)} h {minutes % 60:02.0f} min"


def _flag_value(value: Any) -> str:
    if value == "":
        return "none"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _count(number: Any, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def recipe(run: StepRun) -> list[tuple[str, str | list[str]]]:
    """The pretraining in one block: (label, text) pairs; the changed flags as a list of `--flag value (was)`."""
    args, document = run.args, run.document or {}
    name = args.get("preset")
    items = [("Preset", name if name in PRESETS else f"{name} (not a known preset)" if name
              else "none: the seed's defaults")]
    if args:
        if args.get("run_swav"):
            method = "SwAV (no Un-Mix)"
        elif args.get("unmix_prob"):
            method = f"SwAV + Un-Mix: global mixtures with p {args['unmix_prob']:g}, region (CutMix) otherwise"
        else:
            method = "SwAV + Un-Mix: region (CutMix) mixtures"
        items += [("Method", f"{method}; lam ~ Beta({args.get('unmix_beta', 1.0):g})" if "Un-Mix:" in method
                   else method),
                  ("Trunk and crops", f"{args.get('arch')}; {_crops(args)}"),
                  ("Prototypes", f"{args.get('nmb_prototypes')} prototypes, embedding {args.get('feat_dim')}, "
                                 f"ε {args.get('epsilon')}, queue {args.get('queue_length') or 'none'}"),
                  ("Optimizer", f"{args.get('optimizer', 'lars')}, lr {args.get('base_lr'):g} → "
                                f"{args.get('final_lr'):g}, warmup {_count(args.get('warmup_epochs'), 'epoch')}, "
                                f"wd {args.get('wd'):g}")]
    if document:
        world = document.get("world_size")
        items += [("Scale", f"{world} {'process' if world == 1 else 'processes'} × {args.get('batch_size')} "
                            f"= global batch {document.get('global_batch')}"),
                  ("Length", f"{document.get('steps')} steps, {document.get('epochs')} epochs")]
    plan = (run.records("plan") or [{}])[-1] or args.get("plan") or {}
    if plan.get("derived"):
        layout = plan.get("layout", {})
        items.append(("Auto-scaled", [f"--{flag} {_flag_value(value)}: {plan['rules'].get(flag, '')}"
                                      for flag, value in plan["derived"].items() if flag not in plan.get("given", [])]
                      + [f"for {layout.get('num_nodes')} x {layout.get('gpus_per_node')} {layout.get('gpu')}, "
                         f"global batch {layout.get('global_batch')} (--auto_scale; unmix-swav plan)"]
                      + [f"warning: {warning}" for warning in plan.get("warnings", [])]))
    steps = run.records("train_step")
    rates = [record["images_per_s"] for record in steps[1:] or steps if record.get("images_per_s")]
    if rates:
        items.append(("Throughput", f"{statistics.median(rates):,.0f} images/s (median of the logged steps)"))
    seconds = wall_time_s(run.url)
    items.append(("Wall time", duration(seconds) + (" (start to finish, restarts included)" if seconds else "")))
    if steps:
        last = steps[-1]
        parts = ", ".join(f"{label} {last[key]:.3f}" for key, label in
                          (("loss_ori", "L_ori"), ("loss_mix", "L_mix"), ("loss_mix_rev", "L_mix_rev")) if key in last)
        items.append(("Final loss", f"{last['loss']:.3f}" + (f" ({parts})" if parts else "")
                      + f" at step {last.get('step', last.get('iteration'))}"))
    knn = run.records("knn")
    if knn:
        items.append(("kNN monitor", f"top-1 {knn[-1]['top1']:.1f} at step {knn[-1]['step']} "
                                     f"(first {knn[0]['top1']:.1f} at step {knn[0]['step']})"))
    items.append(("Status", run.status + (f": {run.reason}" if run.reason else "")))
    if args.get("data_path"):
        skipped = document.get("skipped_files")
        items.append(("Data", str(args["data_path"]) + (f"; {skipped} undecodable files skipped" if skipped else "")))
    flags = differing_flags(args) if args else []
    base = name if name in PRESETS else "the defaults"
    items.append((f"Flags that differ from {base}",
                  [f"--{flag} {_flag_value(value)} ({base}: {_flag_value(default)})" for flag, value, default in flags]
                  or "none"))
    return items


# ---------------------------------------------------------------------------------------------- warnings

def _no_box_warning(row: Row, epochs: Any) -> str:
    ran = f"after {epochs} epochs" if epochs else "in this run"
    random = " nor the random-init one" if row.baseline_status is not None else ""
    return (f"{row.title}: AP50 is 0 — neither the pretrained detector{random} found a box {ran}. DETR needs "
            "hundreds of epochs before it places boxes (the protocol trains 300"
            + (f"; this run trained {epochs}" if epochs else "") + "), so these rows measure nothing about the "
            f"pretraining: {NO_BOX}, not a loss to random init")


def format_number(value: float | None, sign: str = "") -> str:
    """One decimal; two under 1 (a short DETR run's AP50 of 0.06 is not 0.1)."""
    if value is None:
        return "—"
    return f"{value:{sign}.2f}" if 0 < abs(value) < 1 else f"{value:{sign}.1f}"


def collect_warnings(steps: dict[str, StepRun], baselines: dict[str, StepRun], rows: list[Row]) -> list[str]:
    warnings = []
    for run in [run for key in STEPS for run in (steps.get(key), baselines.get(key)) if run]:
        if run.document is None:
            warnings.append(f"{run.title}: {run.problem}")
            continue
        if run.status not in STATUSES_OK:
            warnings.append(f"{run.title}: {run.status}" + (f" — {run.reason}" if run.reason else ""))
        if run.document.get("skipped_files"):
            warnings.append(f"{run.title}: {run.document['skipped_files']} undecodable files skipped (their paths "
                            "are in the step's log)")
        loaded = run.document.get("pretrained") or {}
        if loaded.get("expected") and loaded.get("loaded", loaded["expected"]) < loaded["expected"]:
            warnings.append(f"{run.title}: only {loaded['loaded']} of {loaded['expected']} trunk tensors were "
                            f"loaded from {loaded.get('url')}")
    detr = steps.get("detr")
    detr_epochs = detr.args.get("epochs") if detr and detr.args else None
    for row in rows:
        findings = []
        if row.status == NO_BOX:
            if row.headline.metric == "AP50":  # one warning for both detection rows
                warnings.append(_no_box_warning(row, detr_epochs))
            continue
        if row.status == SATURATED:
            continue
        if row.below_baseline:
            findings.append(f"not above random init ({format_number(row.random)}): below_baseline")
        if row.chance is not None and row.pretrained is not None and row.pretrained <= row.chance + 1e-9:
            findings.append(f"at chance ({format_number(row.chance)})")
        if row.headline.metric == "AP50" and row.pretrained == 0:
            findings.append("zero: the detector found no box (too few epochs or images?)")
        elif row.headline.metric == "AP50" and row.pretrained is not None and row.pretrained < WEAK_AP50:
            ran = f"after {detr_epochs} epochs" if detr_epochs else "in this run"
            findings.append(f"under {WEAK_AP50:g}: the detector barely places a box {ran} (DETR needs hundreds of "
                            "epochs; the protocol trains 300), so the detection rows say little about the pretraining")
        if findings:
            warnings.append(f"{row.title} {row.headline.metric}: pretrained {format_number(row.pretrained)} is "
                            + " and ".join(findings))
    for key, twin in baselines.items():
        run = steps.get(key)
        if run and run.document and twin.document:
            ignored = {"pretrained", "dump_path", "subset_file"}
            changed = sorted(name for name in set(run.args) | set(twin.args)
                             if name not in ignored and run.args.get(name) != twin.args.get(name))
            if changed:
                warnings.append(f"{TITLES[key]}: the random-init twin ran with other flags ("
                                + ", ".join(f"{name} {run.args.get(name)} vs {twin.args.get(name)}" for name in changed)
                                + "): the gain compares unlike runs")
    return warnings
