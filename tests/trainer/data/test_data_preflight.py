"""trainer/data/preflight.py on real staged datasets (staged here, in-process, from generated folders) and plain
folders: the splits a step reads, a labelled image per class at a label share, what is not checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.staged import stage_images
from trainer.data.preflight import check_images
from trainer.data.synthetic import make_shapes
from trainer.errors import UserError

EVALUATION = ("train", "val")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Folders: `full` (train/ and val/), `no_circle` (the class `circle` has val images only); staged copies of
    both, and of full/train alone (the seed's `--data_path /path/to/imagenet/train`: a train-only dataset)."""
    root = tmp_path_factory.mktemp("preflight")
    make_shapes(str(root / "full"), num_classes=3, train_per_class=4, val_per_class=2, image_size=16, seed=0)
    shutil.copytree(root / "full", root / "no_circle")
    shutil.rmtree(root / "no_circle" / "train" / "circle")
    staged = {name: stage_images(str(root / "storage"), str(root / source), ["--workers", "1"])
              for name, source in (("staged", "full"), ("staged_no_circle", "no_circle"),
                                   ("staged_train_only", "full/train"))}
    return {"full": str(root / "full"), "train_only": str(root / "full" / "train"), **staged}


def test_a_complete_dataset_passes_and_a_share_under_one_image_per_class_is_said(data):
    assert check_images(data["staged"], EVALUATION) == []
    assert check_images(data["staged"] + "/manifest.json", ("train",)) == []
    [note] = check_images(data["staged"], EVALUATION, labels_percent=10)
    # 10% of 12 images over 3 classes rounds to 0 per class: one each; 50 x 3 / 10 + 1 = 16 images give 10%
    assert "one image per class (3, 25.0% of the images); 16 training images or more give 10%" in note


def test_a_train_only_staged_dataset_fails_every_step_that_reads_val_with_the_fix(data):
    assert check_images(data["staged_train_only"], ("train",)) == []  # pretraining reads train only
    with pytest.raises(UserError) as refused:
        check_images(data["staged_train_only"], EVALUATION)
    message = str(refused.value)
    assert "has no 'val' split (it has: train)" in message and "not its train/ folder" in message
    assert "\n" not in message


def test_a_class_without_training_images_fails_a_labelled_share(data):
    assert check_images(data["staged_no_circle"], EVALUATION) == []  # kNN and linear still run
    with pytest.raises(UserError, match=r"1 of 3 classes have no training image .* \(e.g. 'circle'\), so the 1% "):
        check_images(data["staged_no_circle"], EVALUATION, labels_percent=1)


def test_plain_folders_are_checked_by_one_listing_and_their_class_counts_are_not(data):
    assert check_images(data["full"], EVALUATION) == []
    [note] = check_images(data["full"], EVALUATION, labels_percent=1)
    assert "class counts are not checked" in note
    with pytest.raises(UserError, match="single ImageFolder tree without a val/ folder"):
        check_images(data["train_only"], EVALUATION)
    with pytest.raises(UserError, match="does not exist"):
        check_images(str(Path(data["full"]) / "missing"), EVALUATION)
