"""A pretraining run on a folder holding a truncated PNG, a FIFO and a non-UTF-8 name finishes and counts all
three (pytest-timeout: a FIFO that gets opened would block forever)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.run.metrics import read_records


@pytest.mark.timeout(180)
def test_pretraining_over_bad_files_finishes_and_counts_them(shapes_dir: Path, tmp_path: Path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir / "train", data)
    first_class = sorted(p for p in data.iterdir() if p.is_dir())[0]
    good = sorted(first_class.iterdir())[0]
    truncated = first_class / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    os.mkfifo(first_class / "x.jpg")
    shutil.copy(good, os.fsencode(first_class) + b"/caf\xe9.png")
    dump = tmp_path / "run"
    code = main(["pretrain", "--data_path", str(data), "--dump_path", str(dump), "--preset", "demo_cpu",
                 "--arch", "resnet_tiny", "--epochs", "1", "--batch_size", "11", "--workers", "0",
                 "--size_crops", "32", "--log_freq", "1"])
    assert code == 0
    log = capsys.readouterr().err  # the run sets up its own logging on stderr
    assert "skipped 1 entries that are not regular files" in log and "x.jpg" in log  # the FIFO, never opened
    assert "1 file names are not valid UTF-8" in log and "caf\\xe9.png" in log  # kept and read back
    assert "truncated.png" in log
    final = read_records(str(dump), "final")
    assert len(final) == 1 and final[0]["skipped_files"] == 1  # 66 samples, 6 batches of 11: every file is drawn
    steps = read_records(str(dump), "train_step")
    assert steps and steps[-1]["skipped_files"] == final[0]["skipped_files"]
