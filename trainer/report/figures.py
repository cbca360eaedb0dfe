"""The report's curves as PNGs: pretraining (loss parts, lr, the kNN monitor), the evaluations per epoch
(pretrained beside random init, with chance) and DETR's loss and box AP. matplotlib is imported only here."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from trainer import steps as catalogue
from trainer.report.collect import TITLES, StepRun

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
    keys = [row.key for row in catalogue.EVALUATIONS if row.per_epoch and row.data == "images"
            and any(len(runs[row.key].history()) > 0 for runs in (steps, baselines) if row.key in runs)]
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
