"""End to end, 2 processes over gloo: --compile (Inductor on the CPU) with Un-Mix, a queue in use and frozen
prototypes, through DDP, and the kNN monitor run by both ranks together after each epoch. About 90 s on a
2-core machine with a cold Inductor cache (most of it compiling), 20 s warm."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.run.metrics import read_records

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
FLAGS = ["--preset", "demo_cpu", "--nmb_crops", "2", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.3",
         "0.1", "--max_scale_crops", "1", "0.3", "--batch_size", "8", "--epochs", "8", "--workers", "0",
         "--log_freq", "2", "--nmb_prototypes", "20",
         "--compile", "true",  # torch.compile of the DDP model
         "--freeze_prototypes_niters", "4",  # prototypes frozen for the first 4 of 8 steps
         "--queue_length", "32", "--epoch_queue_starts", "0",  # 16 per rank: full after 2 steps, then used
         "--max_steps", "8"]  # Un-Mix is the default (--run_swav false)


@pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor needs a C++ compiler on the CPU")
@pytest.mark.slow
def test_compiled_two_process_run_with_unmix_queue_and_frozen_prototypes(shapes_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dump = tmp_path / "run"
    done = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(port), "-m", "trainer", "pretrain", "--data_path", str(shapes_dir / "train"),
                           "--dump_path", str(dump), "--knn_eval_path", str(shapes_dir), *FLAGS],
                          env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_records(str(dump), "train_step")
    assert [record["step"] for record in records] == [2, 4, 6, 8]
    assert all("loss_mix" in record and record["loss"] == record["loss"] for record in records)
    checkpoint = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["step"] == 8 and [queue["filled"] for queue in checkpoint["queues"]] == [16, 16]
    assert "node sizing:" in done.stderr
    knn = read_records(str(dump), "knn")
    assert [record["step"] for record in knn] == [4, 8]  # the end of epochs 0 and 1
    assert all(0.0 <= record["top1"] <= record["top5"] <= 100.0 for record in knn)
