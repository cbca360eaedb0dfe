"""A folder where no image decodes is bad input, not a bug: `pretrain` exits 2 with one line giving the count,
whether the loader runs in this process or in workers (whose error the DataLoader re-raises here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.cli.refusal import refused

COUNT = 6


@pytest.fixture
def undecodable(tmp_path: Path) -> Path:
    for index in range(COUNT):
        folder = tmp_path / "data" / ("a", "b")[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}.jpg").write_bytes(bytes(range(256)) * 2)  # a .jpg name, no image inside
    return tmp_path / "data"


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_folder_where_nothing_decodes_exits_2_with_the_count(undecodable, tmp_path, capsys, workers):
    line = refused(capsys, ["pretrain", "--data_path", undecodable, "--dump_path", tmp_path / "out", "--arch",
                            "resnet_tiny", "--preset", "demo_cpu", "--batch_size", "2", "--workers", workers,
                            "--epochs", "1"], f"none of the {COUNT} images of {undecodable}", [])
    assert line.startswith("error: none of")  # not `trainer.errors.UserError: ...` from a worker's traceback
