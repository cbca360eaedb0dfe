"""eval-linear, eval-semisup and eval-knn: bad flags, weights and subset files refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from refusal import refused

TINY = ["--arch", "resnet_tiny", "--image_size", "32", "--workers", "0", "--device", "cpu"]
COMMANDS = ("eval-linear", "eval-semisup", "eval-knn")

# Flags every evaluation shares: (flags, what the refusal must name)
COMMON_BAD = [
    (["--batch_size", "0"], "--batch_size"),
    (["--workers", "-1"], "--workers"),
    (["--image_size", "16"], "--image_size"),
]
# (command, flags, what the refusal must name)
COMMAND_BAD = [
    ("eval-linear", ["--lr", "0"], "--lr"),
    ("eval-linear", ["--lr", "-0.3"], "--lr"),
    ("eval-linear", ["--wd=-1e-6"], "--wd"),
    ("eval-linear", ["--gamma", "0"], "--gamma"),
    ("eval-linear", ["--final_lr", "-1"], "--final_lr"),
    ("eval-linear", ["--epochs", "0"], "--epochs"),
    ("eval-linear", ["--decay_epochs", "80", "60"], "--decay_epochs"),
    ("eval-linear", ["--decay_epochs", "0", "10"], "--decay_epochs"),
    ("eval-linear", ["--decay_epochs", "10", "10"], "--decay_epochs"),
    ("eval-linear", ["--lr", "nan"], "--lr"),
    ("eval-semisup", ["--lr", "0"], "--lr"),
    ("eval-semisup", ["--lr_last_layer", "-1"], "--lr_last_layer"),
    ("eval-semisup", ["--gamma", "-0.2"], "--gamma"),
    ("eval-semisup", ["--epochs", "0"], "--epochs"),
    ("eval-semisup", ["--decay_epochs", "16", "12"], "--decay_epochs"),
    ("eval-knn", ["--k", "0"], "--k"),
    ("eval-knn", ["--nb_knn", "-5"], "--k"),
    ("eval-knn", ["--temperature", "0"], "--temperature"),
    ("eval-knn", ["--temperature", "-0.07"], "--temperature"),
]


def evaluate(command: str, shapes_dir: Path, dump: Path, *flags: str) -> list[str]:
    return [command, "--data_path", str(shapes_dir), "--dump_path", str(dump), *TINY, *flags]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("flags", "named"), COMMON_BAD)
def test_common_flags_are_checked(capsys, shapes_dir: Path, tmp_path: Path, command: str, flags: list[str],
                                  named: str) -> None:
    dump = tmp_path / "run"
    refused(capsys, evaluate(command, shapes_dir, dump, *flags), named, [dump])


@pytest.mark.parametrize(("command", "flags", "named"), COMMAND_BAD)
def test_command_flags_are_checked(capsys, shapes_dir: Path, tmp_path: Path, command: str, flags: list[str],
                                   named: str) -> None:
    dump = tmp_path / "run"
    refused(capsys, evaluate(command, shapes_dir, dump, *flags), named, [dump])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_pretrained_must_be_a_file(capsys, shapes_dir: Path, tmp_path: Path, command: str, kind: str) -> None:
    weights = tmp_path / "weights"
    if kind == "folder":
        weights.mkdir()
    dump = tmp_path / "run"
    line = refused(capsys, evaluate(command, shapes_dir, dump, "--pretrained", str(weights)), "--pretrained", [dump])
    assert ("is a folder" if kind == "folder" else "does not exist") in line


def test_refusal_leaves_an_earlier_run_untouched(capsys, shapes_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "earlier"
    dump.mkdir()
    (dump / "checkpoint.pth.tar").write_bytes(b"an earlier run")
    refused(capsys, evaluate("eval-linear", shapes_dir, dump, "--lr", "-1"), "--lr", [dump])


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_subset_file_must_be_a_file(capsys, shapes_dir: Path, tmp_path: Path, kind: str) -> None:
    subset = tmp_path / "subset.txt"
    if kind == "folder":
        subset.mkdir()
    dump = tmp_path / "run"
    refused(capsys, evaluate("eval-semisup", shapes_dir, dump, "--subset_file", str(subset)), "--subset_file", [dump])


def test_subset_names_outside_the_data_are_counted(capsys, shapes_dir: Path, tmp_path: Path) -> None:
    subset = tmp_path / "subset.txt"
    subset.write_text("circle/00000.jpg\nn01_1.JPEG\nn01_2.JPEG\nn01_3.JPEG\nn01_4.JPEG\n")
    dump = tmp_path / "run"
    line = refused(capsys, evaluate("eval-semisup", shapes_dir, dump, "--subset_file", str(subset)), "--subset_file",
                   [dump / "params.json", dump / "subset.txt", dump / "checkpoint.pth.tar"])
    assert "4/5 names" in line and "'n01_1.JPEG', 'n01_2.JPEG', 'n01_3.JPEG'" in line
    assert "n01_4" not in line
