"""The run report: what a researcher reads first after a run, built from the folders the steps wrote.

`build_report(run_root, steps, baselines, ...)` reads each step's metrics.json (and metrics.jsonl, tb/) from
its dump URL and writes `<run_root>/report/report.html` (self-contained: the figures are embedded PNGs, also
written beside it), `report.md` and the kfp HTML / Markdown / Metrics / ClassificationMetrics artifacts:

- warnings first: every step whose status is not ok (diverged, collapsed) with its reason, pretrained numbers
  not above their random-init twin (below_baseline), numbers at chance, skipped files, steps without results;
- one summary table, like a paper's: each evaluation's headline metric for the pretrained trunk and for a
  randomly initialised one, the gain, chance, the published figure of the preset (trainer/reference.py), the
  status;
- the pretraining recipe in one block: preset, the flags that differ from it, scale, throughput, wall time;
- curves: pretraining loss (L_ori, L_mix, L_mix_rev), lr and the kNN monitor; accuracy and loss per epoch
  of each evaluation, pretrained beside random init; DETR loss and AP per epoch.

A step without a URL is left out; one whose URL holds no metrics.json is named in the warnings.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.runtime import step_url
from trainer import storage
from trainer.config import FLAGS
from trainer.presets import PRESETS, preset
from trainer.reference import Reference, published
from trainer.run import tracking
from trainer.run.metrics import METRICS_DOCUMENT, read_document, read_records

STEPS = ("pretrain", "eval-knn", "eval-linear", "eval-semisup-1pct", "eval-semisup-10pct", "detr")
EVALUATIONS = STEPS[1:]
TITLES = {"pretrain": "Pretraining", "eval-knn": "kNN", "eval-linear": "Linear probe",
          "eval-semisup-1pct": "Semi-supervised, 1% labels", "eval-semisup-10pct": "Semi-supervised, 10% labels",
          "detr": "DETR detection transfer"}
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

def _top(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda document: document.get(key)


def _box(key: str) -> Callable[[dict[str, Any]], float | None]:
    """COCO box AP (a fraction, -1 when not computed) as a paper shows it: x 100."""
    def read(document: dict[str, Any]) -> float | None:
        value = (document.get("box_ap") or {}).get(key)
        return None if value is None or value < 0 else 100.0 * value
    return read


@dataclass(frozen=True)
class Headline:
    step: str
    metric: str
    read: Callable[[dict[str, Any]], float | None]
    top_k: int = 1  # chance is min(100, top_k * 100 / classes); 0: no chance level (detection)

    @property
    def kfp_name(self) -> str:
        return (self.step.removeprefix("eval-").replace("-", "_") + "_"
                + self.metric.replace("-", "").replace(" ", "_"))


HEADLINES = (
    Headline("eval-knn", "top-1", _top("top1")),
    Headline("eval-linear", "top-1", _top("top1")),
    Headline("eval-linear", "top-5", _top("top5"), 5),
    Headline("eval-semisup-1pct", "top-1", _top("top1")),
    Headline("eval-semisup-10pct", "top-1", _top("top1")),
    Headline("detr", "box AP", _box("AP"), 0),
    Headline("detr", "AP50", _box("AP50"), 0),
)


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
        title = f"kNN (k = {run.document['k']})" if headline.step == "eval-knn" and "k" in run.document \
            else TITLES[headline.step]
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
    if run.key == "eval-knn" and document.get("train_samples"):
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


def _duration(seconds: float | None) -> str:
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
    steps = run.records("train_step")
    rates = [record["images_per_s"] for record in steps[1:] or steps if record.get("images_per_s")]
    if rates:
        items.append(("Throughput", f"{statistics.median(rates):,.0f} images/s (median of the logged steps)"))
    seconds = wall_time_s(run.url)
    items.append(("Wall time", _duration(seconds) + (" (start to finish, restarts included)" if seconds else "")))
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


# ---------------------------------------------------------------------------------------------- figures

PRETRAINED_STYLE = {"color": "#1f6fb4", "marker": "o", "markersize": 3}
RANDOM_STYLE = {"color": "#7f7f7f", "linestyle": "--", "marker": "s", "markersize": 3}
CHANCE_STYLE = {"color": "#c0392b", "linestyle": ":", "linewidth": 1}


@dataclass
class Figure:
    name: str  # file name under report/
    title: str
    png: bytes
    caption: str


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod or on CI
    from matplotlib import pyplot

    return pyplot


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    return buffer.getvalue()


def _axes(count: int, rows: int = 1) -> tuple[Any, list[Any]]:
    figure, axes = _pyplot().subplots(rows, count, figsize=(4.4 * count, 3.1 * rows), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    for axis in axes.flat:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure, [axis for row in axes for axis in row]


def pretraining_figure(run: StepRun, knn_random: float | None, knn_chance: float | None) -> Figure | None:
    steps, knn = run.records("train_step"), run.records("knn")
    if not steps:
        return None
    figure, axes = _axes(3 if knn else 2)
    x = [record.get("step", record.get("iteration")) for record in steps]
    for key, label in (("loss", "total"), ("loss_ori", "L_ori"), ("loss_mix", "L_mix"),
                       ("loss_mix_rev", "L_mix_rev")):
        if all(key in record for record in steps):
            axes[0].plot(x, [record[key] for record in steps], label=label, linewidth=1.2)
    prototypes = run.args.get("nmb_prototypes")
    if prototypes:
        axes[0].axhline(math.log(prototypes), label=f"ln K = {math.log(prototypes):.2f} (collapse)", **CHANCE_STYLE)
    axes[0].set(title="SwAV + Un-Mix loss", xlabel="step", ylabel="loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [record.get("lr") for record in steps], color="#2c3e50")
    axes[1].set(title="learning rate", xlabel="step", ylabel="lr")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if knn:
        axes[2].plot([record["step"] for record in knn], [record["top1"] for record in knn], label="pretraining",
                     **PRETRAINED_STYLE)
        if knn_random is not None:
            axes[2].axhline(knn_random, label="random init", **{**RANDOM_STYLE, "marker": None})
        if knn_chance is not None:
            axes[2].axhline(knn_chance, label="chance", **CHANCE_STYLE)
        axes[2].set(title="kNN monitor", xlabel="step", ylabel="top-1 (%)")
        axes[2].legend(fontsize=8)
    caption = "Loss parts and lr per logged step" + ("; kNN top-1 of the trunk at each epoch end" if knn else "")
    return Figure("pretraining.png", "Pretraining", _png(figure), caption + ".")


def _epochs(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    return [epoch for epoch, _ in points], [value for _, value in points]


def evaluations_figure(steps: dict[str, StepRun], baselines: dict[str, StepRun],
                       chance: dict[str, float | None]) -> Figure | None:
    keys = [key for key in ("eval-linear", "eval-semisup-1pct", "eval-semisup-10pct")
            if any(len(runs[key].history()) > 0 for runs in (steps, baselines) if key in runs)]
    if not keys:
        return None
    figure, axes = _axes(len(keys), rows=2)
    for column, key in enumerate(keys):
        accuracy, loss = axes[column], axes[len(keys) + column]
        for runs, label, style in ((steps, "pretrained", PRETRAINED_STYLE), (baselines, "random init", RANDOM_STYLE)):
            if key in runs:
                history = runs[key].history()
                accuracy.plot(*_epochs(history, "top1"), label=label, **style)
                loss.plot(*_epochs(history, "loss"), label=label, **style)
        if chance.get(key) is not None:
            accuracy.axhline(chance[key], label="chance", **CHANCE_STYLE)
        accuracy.set(title=TITLES[key], xlabel="epoch", ylabel="val top-1 (%)")
        accuracy.legend(fontsize=8)
        values = [value for line in loss.get_lines() for value in line.get_ydata() if value > 0]
        if values and max(values) / min(values) > 30:
            loss.set_yscale("log")
        loss.set(xlabel="epoch", ylabel="train loss")
    return Figure("evaluations.png", "Evaluations per epoch", _png(figure),
                  "Validation top-1 and training loss per epoch; solid: pretrained trunk, dashed: random init.")


def detr_figure(run: StepRun | None, twin: StepRun | None) -> Figure | None:
    runs = [(item, label, style) for item, label, style in ((run, "pretrained", PRETRAINED_STYLE),
                                                            (twin, "random init", RANDOM_STYLE))
            if item is not None and item.history()]
    if not runs:
        return None
    figure, axes = _axes(2)
    for item, label, style in runs:
        history = item.history()
        epochs = [row["epoch"] + 1 for row in history]
        axes[0].plot(epochs, [row.get("train_loss") for row in history], label=label, **style)
        for key, light in (("AP", False), ("AP50", True)):
            values = [100 * (row.get("box_ap") or row).get(key, float("nan")) for row in history]
            colour = {"#1f6fb4": "#8ab8e0", "#7f7f7f": "#bdbdbd"}[style["color"]] if light else style["color"]
            axes[1].plot(epochs, values, label=f"{key}, {label}", **{**style, "color": colour})
    axes[0].set(title="DETR training loss", xlabel="epoch", ylabel="loss")
    axes[1].set(title="DETR box AP (val)", xlabel="epoch", ylabel="AP (x100)")
    for axis in axes:
        axis.legend(fontsize=8)
    return Figure("detr.png", "DETR transfer", _png(figure),
                  "Mean training loss and COCO box AP / AP50 after each epoch.")


# ---------------------------------------------------------------------------------------------- the report

@dataclass
class Report:
    run_root: str
    steps: dict[str, StepRun]
    baselines: dict[str, StepRun]
    rows: list[Row]
    warnings: list[str]
    recipe: list[tuple[str, str | list[str]]]
    figures: list[Figure]
    created: str


def collect(run_root: str, steps: dict[str, str], baselines: dict[str, str] | None = None) -> Report:
    """Read every given step (an empty URL counts as absent) into a Report."""
    unknown = sorted(set(steps) - set(STEPS)) + sorted(set(baselines or {}) - set(EVALUATIONS))
    if unknown:
        raise ValueError(f"unknown report steps {unknown}; steps are {STEPS}, baselines {EVALUATIONS}")
    runs = {key: load_step(key, url) for key, url in steps.items() if url}
    twins = {key: load_step(key, url, baseline=True) for key, url in (baselines or {}).items() if url}
    rows = summary_rows(runs, twins)
    chance = {row.headline.step: row.chance for row in rows if row.headline.metric == "top-1"}
    knn_random = next((row.random for row in rows if row.headline.step == "eval-knn"), None)
    figures = [figure for figure in (
        pretraining_figure(runs["pretrain"], knn_random, chance.get("eval-knn")) if "pretrain" in runs else None,
        evaluations_figure(runs, twins, chance),
        detr_figure(runs.get("detr"), twins.get("detr"))) if figure is not None]
    return Report(run_root, runs, twins, rows, collect_warnings(runs, twins, rows),
                  recipe(runs["pretrain"]) if "pretrain" in runs else [], figures,
                  time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def _gain(row: Row) -> str:
    return format_number(row.gain, sign="+")


def _published(row: Row) -> str:
    return "—" if row.published is None else f"{row.published.value:.1f}"


def _has_published(report: Report) -> bool:
    return any(row.published for row in report.rows)


def _status_text(row: Row) -> str:
    return row.status + ("" if row.baseline_status in (None, "ok") else f" (random init: {row.baseline_status})")


def _footnotes(report: Report) -> list[str]:
    notes = ["Last-epoch numbers (a higher best epoch is shown beside them). Gain: pretrained minus random init, "
             "in points. Chance: 100 / classes (top-5: 500 / classes). DETR: COCO box AP x 100."]
    if any(row.status == NO_BOX for row in report.rows):
        notes.append(f"{NO_BOX}: neither detector found a box (AP 0), so the detection rows compare nothing; "
                     "DETR needs hundreds of epochs to learn to place boxes.")
    if any(row.status == SATURATED for row in report.rows):
        notes.append(f"{SATURATED}: both trunks score 100 (top-5 of a few classes), so the row cannot tell them "
                     "apart.")
    seeds = {(twin.document or {}).get("pretrained", {}).get("seed") for twin in report.baselines.values()}
    seeds.discard(None)
    if report.baselines:
        notes.append("Random init: the same architecture with seeded random weights"
                     + (f" (seed {', '.join(map(str, sorted(seeds)))})" if seeds else "")
                     + ", evaluated with the same flags.")
    weights = next((run.document.get("pretrained") for run in report.steps.values()
                    if run.key != "pretrain" and run.document and run.document.get("pretrained")), None)
    if weights and weights.get("sha256"):
        notes.append(f"Pretrained: {weights.get('url')} (sha256 {weights['sha256'][:12]}…).")
    if any(row.published for row in report.rows):
        source = next(row.published.source for row in report.rows if row.published)
        notes.append(f"Published: {source} (semi-supervised: SwAV's 800-epoch model); comparable only with a full "
                     "run of the preset on ImageNet.")
    return notes


def _settings_rows(report: Report) -> list[tuple[str, str, str]]:
    return [(run.title, evaluation_settings(run), str(run.args.get("data_path") or run.args.get("coco_path") or ""))
            for key in EVALUATIONS if (run := report.steps.get(key)) and run.document]


def _files_rows(report: Report) -> list[tuple[str, str, str, str]]:
    runs = [run for key in STEPS for run in (report.steps.get(key), report.baselines.get(key)) if run]
    return [(run.title, run.status, _duration(wall_time_s(run.url)) if run.document else "—", run.url) for run in runs]


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1180px;color:#222;
padding:0 1em;line-height:1.4}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:4px 10px;border-bottom:1px solid #e4e4e4;text-align:left}
th{background:#f4f6f8}td.num{text-align:right;font-variant-numeric:tabular-nums}td.first{font-weight:600}
.best{color:#888;font-size:85%}.note{color:#555;font-size:88%;margin:.2em 0}
.status{padding:1px 7px;border-radius:9px;font-size:85%;white-space:nowrap}
.s-ok{background:#e3f4e8;color:#1e7b34}.s-below_baseline{background:#fff1d6;color:#8a5a00}
.s-bad{background:#fde2e1;color:#a61b1b}
.warnings{background:#fff8e6;border:1px solid #f0c36d;border-radius:6px;padding:.6em 1.2em}
.warnings li{margin:.2em 0}.allgood{background:#eef8f0;border:1px solid #9fd5ad;border-radius:6px;padding:.6em 1.2em}
dl.recipe{display:grid;grid-template-columns:max-content auto;gap:3px 16px}dl.recipe dt{font-weight:600}
dl.recipe dd{margin:0}figure{margin:1em 0}figcaption{color:#555;font-size:90%}img{max-width:100%}
code{font-size:90%}code.flag{white-space:nowrap;background:#f4f6f8;padding:0 4px;border-radius:3px;
margin-right:4px;line-height:1.8}
"""


def _chip(status: str) -> str:
    if status in (NO_BOX, SATURATED):  # no comparison: the amber chip, not a failure's red
        return f"<span class='status s-below_baseline'>{html.escape(status)}</span>"
    kind = status if status in ("ok", "below_baseline") else "bad"
    return f"<span class='status s-{kind}'>{html.escape(status)}</span>"


def _recipe_html(text: str | list[str]) -> str:
    if isinstance(text, str):
        return html.escape(text)
    return " ".join(f"<code class='flag'>{html.escape(item)}</code>" for item in text)


def _recipe_text(text: str | list[str]) -> str:
    return text if isinstance(text, str) else ", ".join(f"`{item}`" for item in text)


def render_html(report: Report) -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>unmix-swav run report: {e(report.run_root)}</title><style>{CSS}</style></head><body>",
             "<h1>unmix-swav run report</h1>",
             f"<p class='sub'>{e(report.run_root)} · written {e(report.created)}</p>"]
    if report.warnings:
        parts.append("<div class='warnings' id='warnings'><strong>Warnings</strong><ul>"
                     + "".join(f"<li>{e(text)}</li>" for text in report.warnings) + "</ul></div>")
    else:
        parts.append("<div class='allgood' id='warnings'>Every step finished ok, above its random-init "
                     "baseline where one ran.</div>")
    parts.append("<h2>Summary</h2>")
    if report.rows:
        shown = _has_published(report)
        parts.append("<table id='summary'><tr><th>Evaluation</th><th>Metric</th><th>Pretrained</th>"
                     "<th>Random init</th><th>Gain</th><th>Chance</th>" + ("<th>Published</th>" if shown else "")
                     + "<th>Status</th></tr>")
        previous = None
        for row in report.rows:
            first = row.title != previous
            previous = row.title
            best = f" <span class='best'>({e(row.best)})</span>" if row.best else ""
            parts.append(
                f"<tr class='result' data-step='{e(row.headline.step)}' data-metric='{e(row.headline.metric)}'>"
                f"<td class='first'>{e(row.title) if first else ''}</td><td>{e(row.headline.metric)}</td>"
                f"<td class='num'>{format_number(row.pretrained)}{best}</td>"
                f"<td class='num'>{format_number(row.random)}</td>"
                f"<td class='num'>{_gain(row)}</td><td class='num'>{format_number(row.chance)}</td>"
                + (f"<td class='num'>{_published(row)}</td>" if shown else "") + f"<td>{_chip(row.status)}"
                + (f" <span class='best'>random init: {e(row.baseline_status)}</span>"
                   if row.baseline_status not in (None, "ok") else "") + "</td></tr>")
        parts.append("</table>" + "".join(f"<p class='note'>{e(note)}</p>" for note in _footnotes(report)))
    else:
        parts.append("<p>No evaluation finished.</p>")
    settings = _settings_rows(report)
    if settings:
        parts.append("<h3>How each evaluation ran</h3><table id='settings'><tr><th>Evaluation</th><th>Settings</th>"
                     "<th>Data</th></tr>" + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td><code>{e(c)}</code></td>"
                                                    f"</tr>" for a, b, c in settings) + "</table>")
    if report.recipe:
        parts.append("<h2>Pretraining recipe</h2><dl class='recipe' id='recipe'>"
                     + "".join(f"<dt>{e(label)}</dt><dd>{_recipe_html(text)}</dd>" for label, text in report.recipe)
                     + "</dl>")
    if report.figures:
        parts.append("<h2>Curves</h2>")
    for figure in report.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f"<figure><img alt='{e(figure.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption><strong>{e(figure.title)}.</strong> {e(figure.caption)}</figcaption></figure>")
    parts.append("<h2>Steps and files</h2><table id='files'><tr><th>Step</th><th>Status</th><th>Wall time</th>"
                 "<th>Location</th></tr>" + "".join(f"<tr><td>{e(a)}</td><td>{_chip(b)}</td><td>{e(c)}</td>"
                                                    f"<td><code>{e(d)}</code></td></tr>"
                                                    for a, b, c, d in _files_rows(report)) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(report: Report, html_url: str) -> str:
    lines = ["# unmix-swav run report", "", f"{report.run_root} · written {report.created}", ""]
    if report.warnings:
        lines += ["**Warnings**", "", *[f"- {_md(text)}" for text in report.warnings], ""]
    if report.rows:
        shown = _has_published(report)
        lines += ["| Evaluation | Metric | Pretrained | Random init | Gain | Chance |"
                  + (" Published |" if shown else "") + " Status |",
                  "|---|---|---:|---:|---:|---:|" + ("---:|" if shown else "") + "---|"]
        lines += [f"| {_md(row.title)} | {row.headline.metric} | {format_number(row.pretrained)} | "
                  f"{format_number(row.random)} | {_gain(row)} | {format_number(row.chance)} |"
                  + (f" {_published(row)} |" if shown else "") + f" {_md(_status_text(row))} |"
                  for row in report.rows]
        lines += ["", *[_md(note) for note in _footnotes(report)], ""]
    if report.recipe:
        lines += ["## Pretraining recipe", "",
                  *[f"- **{_md(label)}**: {_md(_recipe_text(text))}" for label, text in report.recipe], ""]
    lines += [f"Curves and files: {html_url}", ""]
    return "\n".join(lines)


def log_to_kfp(report: Report, metrics_artifact: Any = None, confusion_artifact: Any = None) -> None:
    """Headline numbers (and their random-init twins and gains) as kfp Metrics; the linear probe's confusion
    matrix as kfp ClassificationMetrics when eval-linear wrote one."""
    if metrics_artifact is not None:
        for row in report.rows:
            for suffix, value in (("", row.pretrained), ("_random", row.random), ("_gain", row.gain)):
                if value is not None:
                    metrics_artifact.log_metric(row.headline.kfp_name + suffix, round(float(value), 4))
        steps = report.steps["pretrain"].records("train_step") if "pretrain" in report.steps else []
        if steps:
            metrics_artifact.log_metric("pretrain_final_loss", round(float(steps[-1]["loss"]), 4))
    linear = report.steps.get("eval-linear")
    document = linear.document if linear else None
    if confusion_artifact is not None and document and document.get("confusion_matrix") and document.get("classes"):
        confusion_artifact.log_confusion_matrix([str(name) for name in document["classes"]],
                                                [[int(count) for count in row] for row in document["confusion_matrix"]])


def build_report(run_root: str, steps: dict[str, str], baselines: dict[str, str] | None = None,
                 html_artifact: Any = None, markdown_artifact: Any = None, metrics_artifact: Any = None,
                 confusion_artifact: Any = None) -> str:
    """Write `<run_root>/report/report.html`, `report.md` and the figures; fill the kfp artifacts given; the
    report's URL.

    steps: dump URL (or metrics.json URL) per step of STEPS; baselines: the same for the random-init twins of
    EVALUATIONS. Absent or empty: left out.
    """
    report = collect(run_root, steps, baselines)
    report_url = step_url(run_root, "report/report.html")
    page = render_html(report)
    markdown = render_markdown(report, report_url)
    for figure in report.figures:
        storage.atomic_write_bytes(step_url(run_root, f"report/{figure.name}"), figure.png)
    storage.write_text(step_url(run_root, "report/report.md"), markdown)
    storage.write_text(report_url, page)
    tracking.log_report(run_root, {"report.html": page, "report.md": markdown})
    for artifact, text in ((html_artifact, page), (markdown_artifact, markdown)):
        if artifact is not None:
            with open(artifact.path, "w", encoding="utf-8") as handle:
                handle.write(text)
            artifact.metadata["url"] = report_url
    log_to_kfp(report, metrics_artifact, confusion_artifact)
    return report_url
