"""eval-linear: metrics file, exact resume after an interruption, cached features, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trainer.cli import main
from trainer.errors import UserError
from trainer.evaluation import linear
from trainer.models.resnet import build_trunk, trunk_state_dict


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(5)
    trunk, _ = build_trunk("resnet_tiny")
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save(trunk_state_dict(trunk), path)
    return str(path)


def test_metrics_file_and_outputs(parse, shapes_dir: Path, tmp_path: Path, backbone: str) -> None:
    args = parse("eval-linear", "--data_path", str(shapes_dir), "--pretrained", backbone, "--epochs", "2",
                 "--batch_size", "16", "--dump_path", str(tmp_path))
    results = linear.run_linear(args)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["command"] == "eval-linear"
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert metrics["last"] == metrics["history"][-1] and metrics["top1"] == metrics["last"]["top1"]
    best = max(metrics["history"], key=lambda row: row["top1"])
    assert metrics["best"] == best and metrics["best_epoch"] == best["epoch"]
    assert metrics["pretrained"]["loaded"] == metrics["pretrained"]["expected"] > 0
    assert len(metrics["pretrained"]["sha256"]) == 64
    assert metrics["args"]["lr"] == 0.3 and metrics["args"]["pretrained"] == backbone
    assert json.loads((tmp_path / "params.json").read_text()) == metrics["args"]
    assert results["top1"] == metrics["top1"]
    assert any((tmp_path / "tb").glob("events.out.tfevents.*"))
    # The confusion matrix of the last epoch: rows are the val images of each class, its diagonal the top-1 hits.
    confusion, classes = metrics["confusion_matrix"], metrics["classes"]
    assert len(classes) == 4 and [len(row) for row in confusion] == [4] * 4
    assert [sum(row) for row in confusion] == [8] * 4  # 8 val images per class
    assert math.isclose(100 * sum(confusion[i][i] for i in range(4)) / 32, metrics["top1"])
    assert metrics["status"] == "ok"
    checkpoint = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["model"]["linear.weight"].shape == (4, 512)


def test_resume_after_interruption_equals_uninterrupted_run(interrupted_linear) -> None:
    assert torch.load(interrupted_linear.dump / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    assert interrupted_linear.resume()["history"] == interrupted_linear.straight["history"]


def test_cached_features_probe_learns(parse, shapes_dir: Path, tmp_path: Path) -> None:
    args = parse("eval-linear", "--data_path", str(shapes_dir), "--epochs", "30", "--batch_size", "64",
                 "--cached_features", "--use_bn", "true", "--dump_path", str(tmp_path))
    results = linear.run_linear(args)
    # Fixed (cached) features: only the classifier moves, so its training loss must fall.
    assert results["history"][-1]["loss"] < results["history"][0]["loss"]
    assert len(results["history"]) == 30


def test_changed_settings_do_not_resume_an_old_run(parse, shapes_dir: Path, tmp_path: Path) -> None:
    common = ["--data_path", str(shapes_dir), "--epochs", "1", "--batch_size", "64", "--cached_features",
              "--dump_path", str(tmp_path)]
    linear.run_linear(parse("eval-linear", *common))
    with pytest.raises(UserError, match="other settings.*--lr 0.3 -> 0.1"):
        linear.run_linear(parse("eval-linear", *common, "--lr", "0.1"))


def test_mismatched_checkpoint_is_one_line_error(shapes_dir: Path, tmp_path: Path, backbone: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval-linear", "--data_path", str(shapes_dir), "--pretrained", backbone, "--arch", "resnet18",
                 "--device", "cpu", "--dump_path", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1].startswith("error: ") and "matches only" in error[-1]
    assert not (tmp_path / "metrics.json").exists()


def test_no_global_pooling_needs_a_large_enough_map(parse, shapes_dir: Path, tmp_path: Path) -> None:
    args = parse("eval-linear", "--data_path", str(shapes_dir), "--global_pooling", "false",
                 "--dump_path", str(tmp_path))
    with pytest.raises(UserError, match="--image_size >= 192"):
        linear.run_linear(args)
