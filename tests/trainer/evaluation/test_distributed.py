"""Two processes (torchrun, gloo on the CPU) give the single-process results."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.evaluation import knn, linear

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY = ["--arch", "resnet_tiny", "--image_size", "32", "--workers", "0", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as probe:  # torchrun's --master_port 0 hangs with the static rendezvous
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(command: str, *argv: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(_free_port()), "-m", "trainer", command, *TINY, *argv],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_process_knn_and_linear_match_one_process(parse, shapes_dir: Path, tmp_path: Path) -> None:
    knn_args = ["--data_path", str(shapes_dir), "--k", "5", "--batch_size", "16"]
    linear_args = ["--data_path", str(shapes_dir), "--epochs", "2", "--batch_size", "16",
                   "--cached_features"]
    _torchrun("eval-knn", *knn_args, "--dump_path", str(tmp_path / "knn2"))
    _torchrun("eval-linear", *linear_args, "--dump_path", str(tmp_path / "linear2"))

    single_knn = knn.run_knn(parse("eval-knn", *knn_args, "--dump_path", str(tmp_path / "knn1")))
    two_knn = json.loads((tmp_path / "knn2" / "metrics.json").read_text())
    for key in ("top1", "top5", "train_samples", "val_samples"):
        assert two_knn[key] == single_knn[key], key

    # Cached features stay split by rank: each rank trains on its own share (reshuffled every epoch), so the
    # run is not the single process's batch order, but it trains and scores every val image exactly once.
    two_linear = json.loads((tmp_path / "linear2" / "metrics.json").read_text())
    single_linear = linear.run_linear(parse("eval-linear", *linear_args, "--batch_size", "32",
                                            "--dump_path", str(tmp_path / "linear1")))
    assert [row["epoch"] for row in two_linear["history"]] == [1, 2]
    val_images = 32
    for two, one in zip(two_linear["history"], single_linear["history"], strict=True):
        assert (two["top1"] * val_images / 100) == pytest.approx(round(two["top1"] * val_images / 100))
        assert abs(two["loss"] - one["loss"]) < 0.5 and math.isfinite(two["loss"])
