"""Weighted kNN: the vote itself, and knn_evaluate on generated images as the pretraining monitor uses it."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from trainer.errors import UserError
from trainer.evaluation import knn
from trainer.evaluation.knn import knn_evaluate, topk_correct, weighted_knn_votes
from trainer.models.resnet import build_trunk, trunk_state_dict


def test_votes_are_weighted_by_exp_cosine_over_temperature() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # norm must not matter: cosine similarity
    votes = weighted_knn_votes(bank, labels, query, num_classes=3, k=2, temperature=0.5)
    # Nearest two: bank 0 (cos 1) for class 0 and bank 2 (cos 1/sqrt 2) for class 1.
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp((1 / math.sqrt(2)) / 0.5), 0.0]])
    torch.testing.assert_close(votes, expected)


def test_many_weak_neighbours_can_outvote_one_strong_one() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    sharp = weighted_knn_votes(bank, labels, query, 2, k=3, temperature=0.01)
    flat = weighted_knn_votes(bank, labels, query, 2, k=3, temperature=10.0)
    assert sharp.argmax().item() == 0 and flat.argmax().item() == 1


def test_topk_correct_counts_top1_and_top5() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 2])
    assert topk_correct(scores, labels) == (1, 3)  # 3 classes: top-5 covers all of them


def test_knn_on_shapes_keeps_trunk_mode(shapes_dir: Path) -> None:
    torch.manual_seed(0)
    trunk, _ = build_trunk("resnet_tiny")
    trunk.train()
    trunk.layer1.eval()  # a mixed state must come back exactly
    result = knn_evaluate(trunk, str(shapes_dir), torch.device("cpu"), image_size=32, k=5,
                          batch_size=32, workers=0)
    assert trunk.training and not trunk.layer1.training and trunk.layer2.training
    assert (result["train_samples"], result["val_samples"], result["k"]) == (64, 32, 5)
    assert 0.0 <= result["top1"] <= result["top5"] <= 100.0
    assert result["top5"] == 100.0  # 4 classes: every label is among the top five


def test_val_images_that_are_in_the_bank_find_themselves(shapes_dir: Path, tmp_path: Path) -> None:
    """val = a copy of train: with k=1 each query's nearest neighbour is its own copy, so top-1 is 100%.

    Checks the label plumbing end to end (val targets aligned to train classes, row order of features).
    """
    shutil.copytree(shapes_dir / "train", tmp_path / "train")
    shutil.copytree(shapes_dir / "train", tmp_path / "val")
    torch.manual_seed(0)
    trunk, _ = build_trunk("resnet_tiny")
    result = knn_evaluate(trunk, str(tmp_path), torch.device("cpu"), image_size=32, k=1, batch_size=16,
                          workers=0)
    assert result["top1"] == 100.0 and result["val_samples"] == 64


def test_rejects_bad_k(shapes_dir: Path) -> None:
    trunk, _ = build_trunk("resnet_tiny")
    with pytest.raises(UserError, match="--k 0 is out of range"):
        knn_evaluate(trunk, str(shapes_dir), torch.device("cpu"), k=0)


@pytest.mark.parametrize("old_layout", [False, True], ids=["current", "before-the-epoch-state"])
def test_eval_knn_command_writes_metrics_and_does_not_redo_a_finished_run(
        parse, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old_layout: bool) -> None:
    weights = tmp_path / "backbone.pth"
    torch.save(trunk_state_dict(build_trunk("resnet_tiny")[0]), weights)
    args = parse("eval-knn", "--data_path", str(shapes_dir), "--pretrained", str(weights), "--k", "5",
                 "--dump_path", str(tmp_path / "run"))
    first = knn.run_knn(args)

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["command"] == "eval-knn" and metrics["top1"] == first["top1"]
    assert metrics["best"]["top1"] == first["top1"] and metrics["k"] == 5
    assert metrics["pretrained"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert any((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    path = tmp_path / "run" / "checkpoint.pth.tar"
    new = torch.load(path, weights_only=True)
    assert new["epoch_state"] == 1 and new["results"]["top1"] == first["top1"]
    if old_layout:  # the same finished run as written before the epoch state
        for stale in path.parent.glob("checkpoint.pth.tar.*"):  # a digest record of the new bytes, if any
            stale.unlink()
        first = {**new["results"], "top1": 12.5}  # marks the stored result apart from a recomputed one
        torch.save({"epoch": 0, "results": first, "identity": new["identity"]}, path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished kNN evaluation was recomputed")

    monkeypatch.setattr(knn, "knn_evaluate", must_not_run)
    reported = knn.run_knn(args)
    if old_layout:  # the stored result, with the summary rows made from it
        assert reported.items() >= first.items()
    else:
        assert reported == first


@pytest.mark.parametrize("name", ["random", "none", ""])
def test_a_random_baseline_is_seeded_and_recorded(shapes_dir, tmp_path, name):
    from trainer.cli import main

    runs = []
    for attempt in range(2):
        dump = tmp_path / f"{name or 'empty'}-{attempt}"
        assert main(["eval-knn", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--pretrained", name,
                     "--arch", "resnet_tiny", "--image_size", "32", "--workers", "0"]) == 0
        runs.append(json.loads((dump / "metrics.json").read_text()))
    assert runs[0]["pretrained"] == {"url": "random", "random_init": True, "seed": 31, "sha256": None}
    assert runs[0]["top1"] == runs[1]["top1"]  # the same seed gives the same random trunk
