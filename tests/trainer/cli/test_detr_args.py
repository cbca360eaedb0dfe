"""`unmix-swav detr`: bad flags, weights and COCO annotations refused before any work, in one line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from refusal import NOT_A_FILE, not_a_file, refused

from trainer.detr.synthetic_coco import make_shapes_coco

TINY = ["--arch", "resnet_tiny", "--hidden_dim", "32", "--enc_layers", "1", "--dec_layers", "1",
        "--dim_feedforward", "64", "--nheads", "4", "--num_queries", "10", "--image_size", "64", "--batch_size", "2",
        "--workers", "0", "--device", "cpu", "--epochs", "1"]

BAD_FLAGS = [
    (["--batch_size", "0"], "--batch_size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr=-1e-4"], "--lr"),
    (["--lr_backbone", "-1"], "--lr_backbone"),
    (["--weight_decay", "-1"], "--weight_decay"),
    (["--clip_max_norm", "-0.1"], "--clip_max_norm"),
    (["--workers", "-1"], "--workers"),
    (["--num_classes", "-1"], "--num_classes"),
    (["--image_size", "16"], "--image_size"),
    (["--dropout", "1.0"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--num_queries", "0"], "--num_queries"),
    (["--hidden_dim", "0"], "--hidden_dim"),
    (["--nheads", "0"], "--nheads"),
    (["--lr_drop", "0"], "--lr_drop"),
    (["--enc_layers", "0"], "--enc_layers"),
]


def _first_annotation(document: dict[str, Any]) -> dict[str, Any]:
    return document["annotations"][0]


# (what is broken in instances_train2017.json, what the refusal must name)
BROKEN_TRAIN: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda d: _first_annotation(d).update(bbox=[1, 2, 3]), "bbox"),
    (lambda d: _first_annotation(d).update(bbox=[1, 2, -3, 4]), "bbox"),
    (lambda d: _first_annotation(d).update(bbox=[1, 2, "3", 4]), "bbox"),
    (lambda d: _first_annotation(d).update(category_id=99), "category_id"),
    (lambda d: _first_annotation(d).update(image_id=12345), "image_id"),
    (lambda d: _first_annotation(d).pop("bbox"), "'annotations' entries"),
    (lambda d: d["categories"][0].pop("id"), "'categories' entries"),
    (lambda d: d["images"][0].update(file_name=7), "'images' entries"),
    (lambda d: d.update(images={}), "'images'"),
    (lambda d: d.update(images=[]), "lists no images"),
    (lambda d: d.pop("categories"), "'categories'"),
]


@pytest.fixture(scope="module")
def coco_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_shapes_coco(str(root), train_images=4, val_images=2, image_size=32, seed=0)
    return root


@pytest.fixture
def coco(coco_template: Path, tmp_path: Path) -> Path:
    """A copy of the template this test may break."""
    return Path(shutil.copytree(coco_template, tmp_path / "coco"))


def detr(coco: Path, dump: Path, *flags: str, pretrained: str = "none") -> list[str]:
    return ["detr", "--coco_path", str(coco), "--pretrained", pretrained, "--dump_path", str(dump), *TINY, *flags]


def rewrite(coco: Path, split: str, change: Callable[[dict[str, Any]], Any]) -> None:
    path = coco / "annotations" / f"instances_{split}2017.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS)
def test_bad_flag_is_refused(capsys, coco: Path, tmp_path: Path, flags: list[str], named: str) -> None:
    dump = tmp_path / "run"
    refused(capsys, detr(coco, dump, *flags), named, [dump])


@pytest.mark.parametrize("flag", ["--pretrained", "--resume"])
@pytest.mark.parametrize("kind", NOT_A_FILE)
def test_weights_must_be_files(capsys, coco: Path, tmp_path: Path, flag: str, kind: str) -> None:
    weights = tmp_path / "weights"
    says = not_a_file(weights, kind)
    dump = tmp_path / "run"
    argv = detr(coco, dump, pretrained=str(weights)) if flag == "--pretrained" else detr(coco, dump, flag, weights)
    assert says in refused(capsys, argv, flag, [dump])


@pytest.mark.parametrize(("change", "named"), BROKEN_TRAIN)
def test_broken_annotations_are_refused(capsys, coco: Path, tmp_path: Path,
                                        change: Callable[[dict[str, Any]], Any], named: str) -> None:
    rewrite(coco, "train", change)
    dump = tmp_path / "run"
    line = refused(capsys, detr(coco, dump), named, [dump, coco])
    assert "instances_train2017.json" in line


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_images_are_counted(capsys, coco: Path, tmp_path: Path, split: str) -> None:
    for image in sorted((coco / f"{split}2017").iterdir())[:2]:
        image.unlink()
    dump = tmp_path / "run"
    line = refused(capsys, detr(coco, dump), f"{split}2017", [dump])
    assert "2 of " in line and "000000000001.jpg" in line


def test_annotations_that_are_no_coco_document(capsys, coco: Path, tmp_path: Path) -> None:
    path = coco / "annotations" / "instances_val2017.json"
    path.write_text("[1, 2]")
    dump = tmp_path / "run"
    assert "JSON list" in refused(capsys, detr(coco, dump), "instances_val2017.json", [dump])
    path.write_text("{not json")
    assert "not valid JSON" in refused(capsys, detr(coco, dump), "instances_val2017.json", [dump])
    path.unlink()
    refused(capsys, detr(coco, dump), "--coco_path", [dump])


def test_refusal_leaves_an_earlier_run_untouched(capsys, coco: Path, tmp_path: Path) -> None:
    dump = tmp_path / "earlier"
    dump.mkdir()
    (dump / "checkpoint.pth").write_bytes(b"an earlier run")
    rewrite(coco, "train", lambda d: _first_annotation(d).update(category_id=99))
    refused(capsys, detr(coco, dump), "category_id", [dump])
