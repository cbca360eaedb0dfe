"""A tiny real run for the export tests: pretraining (2 steps) and eval-linear (with and without BatchNorm, and
the random-init twin) on builtin:shapes, laid out as the pipeline lays out a run (<run>/pretrain, <run>/eval-*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cli import main

PRETRAIN = ["--preset", "demo_cpu", "--arch", "resnet_tiny", "--nmb_crops", "2", "--size_crops", "32",
            "--min_scale_crops", "0.3", "--max_scale_crops", "1", "--batch_size", "8", "--workers", "0",
            "--nmb_prototypes", "20", "--max_steps", "2", "--log_freq", "1"]
LINEAR = ["--arch", "resnet_tiny", "--image_size", "32", "--workers", "0", "--device", "cpu", "--epochs", "3",
          "--batch_size", "16"]


@pytest.fixture(scope="session")
def run_dir(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    assert main(["pretrain", "--data_path", str(shapes_dir / "train"), "--dump_path", str(run / "pretrain"),
                 *PRETRAIN]) == 0
    backbone = str(run / "pretrain" / "backbone.pth")
    for folder, extra in (("eval-linear", []), ("eval-linear-bn", ["--use_bn", "true"]),
                          ("eval-linear-random", ["--pretrained", "random"])):
        flags = ["--pretrained", backbone, *extra]
        assert main(["eval-linear", "--data_path", str(shapes_dir), "--dump_path", str(run / folder), *LINEAR,
                     *flags]) == 0
    return run
