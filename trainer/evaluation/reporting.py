"""What every evaluation ends with: the summary of its epochs in metrics.json and a `final` record."""

from __future__ import annotations

from typing import Any

from trainer.run.metrics import MetricsLog, write_document
from trainer.run.session import RunSession


def summary(history: list[dict[str, float]]) -> dict[str, Any]:
    """Top-1 / top-5 of the last and of the best (highest top-1) epoch of `history`."""
    last = history[-1]
    best = max(history, key=lambda row: row["top1"])
    return {"top1": last["top1"], "top5": last["top5"], "last": last, "best": best,
            "best_epoch": best["epoch"]}


def finish(session: RunSession, metrics: MetricsLog, command: str, pretrained: dict[str, Any] | None,
           history: list[dict[str, Any]], extra: dict[str, Any] | None, health: dict[str, str]) -> dict[str, Any]:
    """Record the final result with the run's health (trainer.run.health), write metrics.json (main rank) and
    close the metrics; the results."""
    results = {**summary(history), "history": history, **(extra or {}), **health}
    metrics.record("final", history[-1]["epoch"], {"top1": results["top1"], "top5": results["top5"],
                                                    "status": health["status"]})
    if session.env.is_main:
        write_document(session.dump_path, {"command": command, **results, "pretrained": pretrained,
                                           "args": session.params})
    metrics.close()
    return results

