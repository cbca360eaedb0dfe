"""eval-semisup: subset written and reusable, fine-tuned weights loadable, dump_path on S3."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from trainer import storage
from trainer.data.sources import open_source
from trainer.errors import UserError
from trainer.evaluation import semisup
from trainer.models.pretrained import load_pretrained_trunk
from trainer.models.resnet import build_trunk


def test_subset_file_repeats_a_run_and_weights_reload(parse, shapes_dir: Path, tmp_path: Path) -> None:
    first = parse("eval-semisup", "--data_path", str(shapes_dir), "--labels_perc", "10", "--epochs", "2",
                  "--decay_epochs", "1", "--batch_size", "8", "--seed", "4", "--dump_path", str(tmp_path / "a"))
    results = semisup.run_semisup(first)

    names = (tmp_path / "a" / "subset.txt").read_text().splitlines()
    source = open_source(str(shapes_dir), split="train")
    by_name = {source.name(i): source.classes[t] for i, t in enumerate(source.targets)}
    assert Counter(by_name[n] for n in names) == {c: 2 for c in source.classes}  # 10% of 16, balanced
    assert results["labelled_samples"] == 8
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["args"]["lr"] == 0.01 and metrics["args"]["lr_last_layer"] == 0.2  # the 10% protocol
    assert metrics["subset_sha256"] == results["subset_sha256"]

    again = parse("eval-semisup", "--data_path", str(shapes_dir), "--epochs", "1", "--batch_size", "8",
                  "--subset_file", str(tmp_path / "a" / "subset.txt"), "--dump_path", str(tmp_path / "b"))
    assert semisup.run_semisup(again)["subset_sha256"] == results["subset_sha256"]

    trunk, _ = build_trunk("resnet_tiny")
    report = load_pretrained_trunk(trunk, str(tmp_path / "a" / "checkpoint.pth.tar"))
    assert report.loaded == report.expected and report.source_format == "unmix-swav checkpoint"


def test_one_percent_protocol_on_s3(parse, s3_server, shapes_dir: Path) -> None:
    dump = f"{s3_server.bucket('evals')}/semisup-1pct"
    args = parse("eval-semisup", "--data_path", str(shapes_dir), "--labels_perc", "1", "--epochs", "1",
                 "--batch_size", "8", "--dump_path", dump)
    results = semisup.run_semisup(args)
    assert results["labelled_samples"] == 4  # one image per class
    metrics = json.loads(storage.read_text(f"{dump}/metrics.json"))
    assert (metrics["args"]["lr"], metrics["args"]["lr_last_layer"]) == (0.02, 5.0)
    assert len(storage.read_text(f"{dump}/subset.txt").splitlines()) == 4
    fs, path = storage.filesystem(f"{dump}/tb")
    assert any("tfevents" in name for name in fs.ls(path))
    assert torch.load(io.BytesIO(storage.read_bytes(f"{dump}/checkpoint.pth.tar")),
                      weights_only=True)["epoch"] == 1


def test_unknown_subset_names_are_refused(parse, shapes_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("n01440764_10026.JPEG\n")
    args = parse("eval-semisup", "--data_path", str(shapes_dir), "--subset_file", str(tmp_path / "list.txt"),
                 "--dump_path", str(tmp_path / "run"))
    with pytest.raises(UserError, match="not in the training data"):
        semisup.run_semisup(args)


@pytest.mark.parametrize(("lr_last_layer", "code"), [(50.0, 0), (1e30, 2)])
def test_a_diverging_fine_tuning_is_flagged_or_stopped_with_the_fix(shapes_dir, tmp_path, capsys, lr_last_layer,
                                                                    code):
    """A loss climbing far above its start finishes flagged; a non-finite one stops with one line (exit 2).
    Either way metrics.json says `diverged` and names --lr_last_layer."""
    from trainer.cli import main

    dump = tmp_path / "run"
    assert main(["eval-semisup", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--arch", "resnet_tiny",
                 "--image_size", "32", "--batch_size", "8", "--workers", "0", "--epochs", "4", "--labels_perc",
                 "10", "--lr_last_layer", str(lr_last_layer)]) == code
    metrics = json.loads((dump / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "--lr_last_layer" in metrics["status_reason"]
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ([] if code == 0 else [errors[0]]) and all("became nan" in line for line in errors)


def test_a_healthy_fine_tuning_says_ok(shapes_dir, tmp_path):
    from trainer.cli import main

    dump = tmp_path / "run"
    assert main(["eval-semisup", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--arch", "resnet_tiny",
                 "--image_size", "32", "--batch_size", "8", "--workers", "0", "--epochs", "2", "--labels_perc",
                 "10", "--lr_last_layer", "0.05"]) == 0
    assert json.loads((dump / "metrics.json").read_text())["status"] == "ok"
