"""End to end: the pretraining command on a tiny generated dataset, 2 processes over gloo, and resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.cli import main
from trainer.models.resnet import build_reference
from trainer.run.metrics import read_records

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY = ["--preset", "demo_cpu", "--nmb_crops", "2", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.3",
        "0.1", "--max_scale_crops", "1", "0.3", "--batch_size", "8", "--epochs", "8",
        "--workers", "0", "--log_freq", "2", "--nmb_prototypes", "20", "--freeze_prototypes_niters", "4"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_pretrain(data: Path, dump: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "trainer", "pretrain", "--data_path", str(data), "--dump_path", str(dump), *TINY, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_process_run(shapes_dir, tmp_path_factory):
    dump = tmp_path_factory.mktemp("pretrain")
    first = torchrun_pretrain(shapes_dir / "train", dump, "--max_steps", "12")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint_after_first = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    second = torchrun_pretrain(shapes_dir / "train", dump, "--max_steps", "24")
    assert second.returncode == 0, second.stderr[-3000:]
    return dump, checkpoint_after_first, second.stderr


@pytest.mark.slow
def test_two_process_run_learns_and_writes_its_outputs(two_process_run):
    dump, _, _ = two_process_run
    lines = read_records(str(dump), "train_step")
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    assert {"epoch", "iteration", "lr", "images_per_s", "data_time", "lam", "loss_mix"} <= set(lines[0])
    params = json.loads((dump / "params.json").read_text())
    assert params["world_size"] == 2 and params["arch"] == "resnet_tiny"
    assert any((dump / "tb").iterdir())
    assert sorted(p.name for p in (dump / "checkpoints").iterdir())  # ckp-<epoch>.pth kept
    reference = build_reference("resnet_tiny")
    result = reference.load_state_dict(torch.load(dump / "backbone.pth", weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


@pytest.mark.slow
def test_second_invocation_resumes_at_the_next_step(two_process_run):
    dump, first_checkpoint, second_log = two_process_run
    assert first_checkpoint["step"] == 12 and first_checkpoint["world_size"] == 2
    assert "resumed from" in second_log and "at step 12" in second_log
    steps = [record["step"] for record in read_records(str(dump), "train_step")]
    assert steps == list(range(2, 25, 2))  # no step repeated, none skipped
    final = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    assert final["step"] == 24 and final["epoch"] == 6 and final["iteration"] == 0


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(shapes_dir, tmp_path, capsys, monkeypatch):
    import trainer.swav_step as swav_step

    real_forward = swav_step.forward_loss
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        loss, parts, embeddings = real_forward(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), parts, embeddings

    monkeypatch.setattr(swav_step, "forward_loss", exploding)
    argv = ["pretrain", "--data_path", str(shapes_dir / "train"), "--dump_path", str(tmp_path), *TINY,
            "--checkpoint_every_steps", "4"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "the loss became nan at step 6" in err
    assert torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)["step"] == 4


def test_collapse_warning_names_the_remedies():
    from trainer.pretrain import collapse_warning

    assert collapse_warning(8.0, 3000, 3) and "--epsilon 0.03" in collapse_warning(8.0, 3000, 3)
    assert collapse_warning(5.0, 3000, 3) is None


def test_a_finished_pretraining_says_how_it_went_in_metrics_json(two_process_run):
    dump, _, _ = two_process_run
    document = json.loads((dump / "metrics.json").read_text())
    assert document["command"] == "pretrain" and document["status"] in ("ok", "collapsed")
    assert document["steps"] == 24 and document["world_size"] == 2 and document["last_log"]["step"] == 24
    assert read_records(str(dump), "final")[0]["status"] == document["status"]
