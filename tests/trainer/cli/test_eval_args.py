"""eval-linear, eval-semisup and eval-knn: bad flags, weights and subset files refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from refusal import NOT_A_FILE, not_a_file, refused

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
# (command, flag) of each file an evaluation reads
FILE_FLAGS = [(command, "--pretrained") for command in COMMANDS] + [("eval-semisup", "--subset_file")]


def evaluate(command: str, shapes_dir: Path, dump: Path, *flags: str) -> list[str]:
    return [command, "--data_path", str(shapes_dir), "--dump_path", str(dump), *TINY, *flags]


@pytest.mark.parametrize(("command", "flags", "named"),
                         [(command, flags, named) for command in COMMANDS for flags, named in COMMON_BAD] + COMMAND_BAD)
def test_flags_are_checked(capsys, shapes_dir: Path, tmp_path: Path, command: str, flags: list[str],
                           named: str) -> None:
    dump = tmp_path / "run"
    refused(capsys, evaluate(command, shapes_dir, dump, *flags), named, [dump])


@pytest.mark.parametrize(("command", "flag"), FILE_FLAGS)
@pytest.mark.parametrize("kind", NOT_A_FILE)
def test_files_must_be_files(capsys, shapes_dir: Path, tmp_path: Path, command: str, flag: str, kind: str) -> None:
    path = tmp_path / "file"
    says = not_a_file(path, kind)
    dump = tmp_path / "run"
    assert says in refused(capsys, evaluate(command, shapes_dir, dump, flag, str(path)), flag, [dump])


def test_refusal_leaves_an_earlier_run_untouched(capsys, shapes_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "earlier"
    dump.mkdir()
    (dump / "checkpoint.pth.tar").write_bytes(b"an earlier run")
    refused(capsys, evaluate("eval-linear", shapes_dir, dump, "--lr", "-1"), "--lr", [dump])


def test_subset_names_outside_the_data_are_counted(capsys, shapes_dir: Path, tmp_path: Path) -> None:
    subset = tmp_path / "subset.txt"
    subset.write_text("circle/00000.jpg\nn01_1.JPEG\nn01_2.JPEG\nn01_3.JPEG\nn01_4.JPEG\n")
    dump = tmp_path / "run"
    line = refused(capsys, evaluate("eval-semisup", shapes_dir, dump, "--subset_file", str(subset)), "--subset_file",
                   [dump / "params.json", dump / "subset.txt", dump / "checkpoint.pth.tar"])
    assert "4/5 names" in line and "'n01_1.JPEG', 'n01_2.JPEG', 'n01_3.JPEG'" in line
    assert "n01_4" not in line
