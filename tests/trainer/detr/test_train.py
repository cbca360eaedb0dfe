"""`unmix-swav detr` end to end on the CPU: fine-tune, evaluate, resume, refuse, two processes, S3."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import storage
from trainer.cli import main
from trainer.detr.evaluator import AP_NAMES
from trainer.detr.synthetic_coco import make_shapes_coco
from trainer.detr.train import detr_args, run_detr
from trainer.errors import UserError

TRUNK = "model.backbone.model.trunk."
# A learning rate that moves a 1-layer DETR visibly within a few dozen CPU steps (the recipe's 1e-4 does not).
FAST = ["--lr", "2e-3", "--lr_backbone", "1e-4", "--dropout", "0"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fine_tune_evaluates_and_resumes(coco_dir: Path, pretrained_tiny: Path, tiny_flags: list[str],
                                         tmp_path: Path) -> None:
    dump = tmp_path / "run"
    common = ["detr", "--coco_path", str(coco_dir), "--pretrained", str(pretrained_tiny),
              "--dump_path", str(dump), *tiny_flags, *FAST]
    assert main([*common, "--epochs", "6"]) == 0

    metrics = json.loads((dump / "metrics.json").read_text())
    history = metrics["history"]
    assert [entry["epoch"] for entry in history] == list(range(6))
    assert all(entry["steps"] == 6 for entry in history)  # 24 images, batch 4
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.1
    assert set(metrics["box_ap"]) == set(AP_NAMES)
    assert all(0.0 <= metrics["box_ap"][name] <= 1.0 for name in ("AP", "AP50", "AP75"))
    assert metrics["pretrained"]["sha256"] == hashlib.sha256(pretrained_tiny.read_bytes()).hexdigest()
    assert metrics["pretrained"]["loaded"] == metrics["pretrained"]["expected"] == 60
    assert metrics["num_classes"] == 4 and metrics["world_size"] == 1
    assert json.loads((dump / "params.json").read_text())["lr"] == 2e-3
    assert list((dump / "tb").glob("events.out.tfevents.*"))

    # Fine-tuned as DETR does: frozen BatchNorm and untrained stem/layer1 keep the pretrained tensors.
    checkpoint = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    source = torch.load(pretrained_tiny, weights_only=True)
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.0.bn2.weight",
                "layer4.0.bn2.running_var"):
        assert torch.equal(checkpoint["model"][TRUNK + key], source[key]), key
    assert not torch.equal(checkpoint["model"][TRUNK + "layer4.0.conv2.weight"], source["layer4.0.conv2.weight"])

    # Resume from <dump_path>/checkpoint.pth.tar: one more epoch, the first six kept as they were.
    assert main([*common, "--epochs", "7"]) == 0
    resumed = json.loads((dump / "metrics.json").read_text())["history"]
    assert len(resumed) == 7 and resumed[:6] == history
    assert torch.load(dump / "checkpoint.pth.tar", weights_only=True)["step"] == 42


def test_resume_flag_continues_a_checkpoint_from_another_dump_path(coco_dir: Path, pretrained_tiny: Path,
                                                                     tiny_flags: list[str], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["detr", "--coco_path", str(coco_dir), "--pretrained", str(pretrained_tiny), *tiny_flags, *FAST]
    assert main([*common, "--dump_path", str(tmp_path / "first"), "--epochs", "1"]) == 0
    monkeypatch.chdir(tmp_path)  # a relative --resume is read from where the command runs, not under --dump_path
    capsys.readouterr()
    assert main([*common, "--dump_path", str(tmp_path / "second"), "--epochs", "2",
                 "--resume", "first/checkpoint.pth.tar"]) == 0
    assert "/first/checkpoint.pth.tar after epoch 1" in capsys.readouterr().err
    assert [entry["epoch"] for entry in json.loads((tmp_path / "second" / "metrics.json").read_text())["history"]] \
        == [0, 1]


def test_mismatched_pretrained_is_refused(coco_dir: Path, pretrained_tiny: Path, tiny_flags: list[str],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # resnet_tiny weights have one block per stage: a resnet18 trunk would stay half random.
    flags = [*tiny_flags, "--arch", "resnet18"]
    code = main(["detr", "--coco_path", str(coco_dir), "--pretrained", str(pretrained_tiny),
                 "--dump_path", str(tmp_path / "run"), *flags, "--epochs", "1"])
    assert code == 2
    error = capsys.readouterr().err
    assert "matches only" in error and "--arch" in error
    assert not (tmp_path / "run" / "checkpoint.pth.tar").exists()


@pytest.mark.slow
def test_two_processes(coco_dir: Path, pretrained_tiny: Path, tiny_flags: list[str], tmp_path: Path) -> None:
    dump = tmp_path / "ddp"
    command = [sys.executable, "-m", "trainer", "detr", "--coco_path", str(coco_dir), "--pretrained",
               str(pretrained_tiny), "--dump_path", str(dump), *tiny_flags, *FAST, "--epochs", "1"]
    port = str(_free_port())
    ranks = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [process.communicate(timeout=300)[0] for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    metrics = json.loads((dump / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert [entry["steps"] for entry in metrics["history"]] == [3]  # 24 images / (batch 4 x 2 ranks)
    assert set(metrics["box_ap"]) == set(AP_NAMES)
    # Both ranks' shares reached the evaluator on rank 0: 8 val images x 10 queries.
    assert "evaluation of 80 detections on 8 images" in outputs[0]
    assert "box AP" in outputs[0] and "box AP" not in outputs[1]


def test_coco_and_outputs_on_s3(s3_server, pretrained_tiny: Path, tiny_values: dict[str, object]) -> None:
    bucket = s3_server.bucket("detr-test")
    coco = f"{bucket}/coco"
    make_shapes_coco(coco, train_images=8, val_images=4, image_size=64, seed=1)
    weights = f"{bucket}/weights/backbone.pth"
    storage.atomic_write_bytes(weights, pretrained_tiny.read_bytes())
    args = detr_args(coco_path=coco, pretrained=weights, dump_path=f"{bucket}/run", epochs=1,
                     **{**tiny_values, "workers": 1})
    returned = run_detr(args)
    metrics = json.loads(storage.read_text(f"{bucket}/run/metrics.json"))
    assert metrics["box_ap"] == returned["box_ap"] and metrics["history"][0]["steps"] == 2
    fs, path = storage.filesystem(f"{bucket}/run/tb")
    assert any("tfevents" in name for name in fs.ls(path))
    assert storage.exists(f"{bucket}/run/checkpoint.pth.tar")


def test_detr_args_fills_defaults_and_rejects_unknown_options() -> None:
    args = detr_args(coco_path="s3://b/coco", pretrained="none", dump_path="s3://b/run", epochs=3)
    assert (args.epochs, args.lr, args.lr_backbone, args.num_queries, args.arch) == (3, 1e-4, 5e-5, 100, "resnet50")
    with pytest.raises(UserError, match="unknown DETR option"):
        detr_args(coco_path="c", pretrained="none", dump_path="d", learning_rate=1.0)
    with pytest.raises(UserError, match="--dump_path"):
        detr_args(coco_path="c", pretrained="none")
