"""The check step checks what the later steps need from the data, before pretraining starts: a train-only staged
dataset (the seed's `--data_path /path/to/imagenet/train`, staged) fails it in seconds with one line per step
that reads val/, naming the split and the fix. Real staging of generated folders, the check step's real inputs."""

from __future__ import annotations

import time

import pytest

from components import jobs
from components.staged import stage_images
from tests.components.test_jobs import check_inputs
from trainer.data.synthetic import make_shapes


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("check-data")
    make_shapes(str(root / "shapes"), num_classes=3, train_per_class=4, val_per_class=2, image_size=16, seed=0)
    from trainer.detr.synthetic_coco import make_shapes_coco

    make_shapes_coco(str(root / "coco"), train_images=2, val_images=1, image_size=32, seed=0)
    return {"train_only": stage_images(str(root / "storage"), str(root / "shapes" / "train"), ["--workers", "1"]),
            "both": stage_images(str(root / "storage"), str(root / "shapes"), ["--workers", "1"]),
            "coco": str(root / "coco")}


@pytest.mark.parametrize("knn_monitor", [True, False])
def test_a_train_only_dataset_fails_the_check_step_in_seconds_with_one_line_per_step(tmp_path, datasets, capfd,
                                                                                     knn_monitor):
    inputs = check_inputs(str(tmp_path), datasets["coco"], images_url=datasets["train_only"], knn_monitor=knn_monitor)
    started = time.monotonic()
    with pytest.raises(SystemExit) as ended:
        jobs.check_run(inputs)
    seconds = time.monotonic() - started
    err = capfd.readouterr().err
    print(f"train-only dataset: the check step failed in {seconds:.1f}s")
    assert ended.value.code == 2 and seconds < 60  # seconds (imports included), not a pretraining's hours
    lines = [line for line in err.splitlines() if "has no 'val' split (it has: train)" in line]
    steps = ["kNN evaluation", "linear evaluation", "semi-supervised 1%", "semi-supervised 10%"]
    expected = (["pretraining (pretrain): the kNN monitor (--knn_eval_path, knn_monitor): "] if knn_monitor else [])
    expected += [f"{name} (" for name in steps]
    assert len(lines) == len(expected)
    for start, line in zip(expected, lines, strict=True):
        assert line.startswith("error: " + start) and "not its train/ folder" in line
    named = ", ".join((["pretraining"] if knn_monitor else []) + steps)
    assert f"error: data the step cannot run on in {len(expected)} step(s) ({named}); nothing was started" in err
    assert "DETR transfer (" not in err  # its COCO annotations are there


def test_a_dataset_with_both_splits_passes_and_the_label_share_is_reported(tmp_path, datasets, capfd):
    jobs.check_run(check_inputs(str(tmp_path), datasets["coco"], images_url=datasets["both"], knn_monitor=True))
    out = capfd.readouterr().out
    # 12 training images over 3 classes: 1% and 10% both round to under one image per class
    assert "[check] semi-supervised 1%: 1% of the 12 training images" in out
    assert "[check] semi-supervised 10%: 10% of the 12 training images" in out
