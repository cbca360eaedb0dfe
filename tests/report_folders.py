"""A run's step folders written by hand for the report's tests (no training): metrics.json, metrics.jsonl and
the layout the pipeline and k8s/ give a run (<root>/<key>, the random-init twins in <root>/<key>-random)."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.config import FLAGS
from trainer.presets import preset

CLASSES = ["circle", "square", "star", "triangle"]


def write_step(folder: Path, document: dict | None, records: list[dict] = ()) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    if document is not None:
        (folder / "metrics.json").write_text(json.dumps(document))
    if records:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(folder)


def pretrain_args(**changes) -> dict:
    return {**{name: spec[2] for name, spec in FLAGS.items()}, **preset("demo_cpu"), "preset": "demo_cpu",
            "data_path": "/data/shapes", "dump_path": "/run/pretrain", **changes}


def pretraining(folder: Path, status: str = "ok", reason: str = "", skipped: int = 0, **changes) -> str:
    records = [{"kind": "train_step", "step": step, "epoch": 0, "iteration": step, "loss": 9.0 - step / 4,
                "loss_ori": 4.5 - step / 8, "loss_mix": 4.4 - step / 8, "loss_mix_rev": 4.6 - step / 8,
                "lr": 1e-3 * step, "images_per_s": 100.0 + step, "skipped_files": 0} for step in range(1, 9)]
    records += [{"kind": "knn", "step": 4, "top1": 40.0, "top5": 100.0},
                {"kind": "knn", "step": 8, "top1": 55.0, "top5": 100.0}]
    return write_step(folder, {"command": "pretrain", "status": status, "status_reason": reason, "steps": 8,
                               "epochs": 2, "world_size": 2, "global_batch": 64, "skipped_files": skipped,
                               "last_log": records[7], "args": pretrain_args(**changes)}, records)


def evaluation(folder: Path, command: str, top1: list[float], random: bool = False, status: str = "ok",
               reason: str = "", **extra) -> str:
    history = [{"epoch": epoch + 1, "top1": value, "top5": 100.0, "loss": 2.0 - epoch / 10, "lr": 0.1}
               for epoch, value in enumerate(top1)]
    weights = {"url": "random", "random_init": True, "seed": 31, "sha256": None} if random else \
        {"url": "/run/pretrain/backbone.pth", "sha256": "ab" * 32, "loaded": 60, "expected": 60}
    document = {"command": command, "top1": top1[-1], "top5": 100.0, "history": history, "status": status,
                "status_reason": reason, "best": max(history, key=lambda row: row["top1"]), "pretrained": weights,
                "args": {"data_path": "/data/shapes", "epochs": len(top1), "lr": 0.1, "batch_size": 8,
                         "pretrained": weights["url"], "dump_path": str(folder)}, **extra}
    return write_step(folder, document, [{"kind": "eval_epoch", "step": row["epoch"], **row} for row in history])


def detr(folder: Path, ap: float, ap50: float, random: bool = False) -> str:
    history = [{"epoch": epoch, "train_loss": 7.0 - epoch, "box_ap": {"AP": ap * (epoch + 1) / 2,
                                                                      "AP50": ap50 * (epoch + 1) / 2, "APl": -1.0}}
               for epoch in range(2)]
    return write_step(folder, {"command": "detr", "status": "ok", "status_reason": "", "box_ap": history[-1]["box_ap"],
                               "num_classes": 4, "history": history,
                               "pretrained": {"url": "random", "seed": 42} if random else {"url": "/b.pth"},
                               "args": {"coco_path": "/data/coco", "epochs": 2, "lr": 1e-4,
                                        "pretrained": "random" if random else "/b.pth"}})


def full_run(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    confusion = {"classes": CLASSES, "confusion_matrix": [[8, 0, 0, 0], [1, 7, 0, 0], [0, 0, 6, 2], [0, 1, 0, 7]]}
    steps = {
        "pretrain": pretraining(root / "pretrain", epochs=2),
        "eval-knn": evaluation(root / "eval-knn", "eval-knn", [60.0], k=20),
        "eval-linear": evaluation(root / "eval-linear", "eval-linear", [50.0, 87.5, 84.375], **confusion),
        "eval-semisup-1pct": evaluation(root / "eval-semisup-1pct", "eval-semisup", [30.0, 25.0], classes=CLASSES,
                                        status="diverged", reason="the loss climbed from 1.4 to 654; lower "
                                                                  "--lr_last_layer"),
        "eval-semisup-10pct": evaluation(root / "eval-semisup-10pct", "eval-semisup", [40.0, 50.0], classes=CLASSES),
        "detr": detr(root / "detr", 0.02, 0.06),
    }
    baselines = {
        "eval-knn": evaluation(root / "eval-knn-random", "eval-knn", [45.0], random=True, k=20),
        "eval-linear": evaluation(root / "eval-linear-random", "eval-linear", [40.0, 42.0, 45.0], random=True,
                                  **confusion),
        "eval-semisup-1pct": evaluation(root / "eval-semisup-1pct-random", "eval-semisup", [25.0, 25.0], random=True,
                                        classes=CLASSES),
        "eval-semisup-10pct": evaluation(root / "eval-semisup-10pct-random", "eval-semisup", [50.0, 55.0],
                                         random=True, classes=CLASSES),
        "detr": detr(root / "detr-random", 0.01, 0.03, random=True),
    }
    return steps, baselines
