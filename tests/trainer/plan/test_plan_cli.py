"""`unmix-swav plan`: the JSON keys, the table, a batch that cannot fit (exit 2, the plan still printed), the
published recipes reproduced through the command, data counts from a staged manifest."""

from __future__ import annotations

import json

import pytest

from trainer.cli import main

TINY = ["--arch", "resnet_tiny", "--nmb_crops", "2", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.3",
        "0.1", "--max_scale_crops", "1", "0.3", "--hidden_mlp", "64", "--feat_dim", "16"]
JSON_KEYS = {"derived", "rules", "memory", "throughput", "time", "warnings"}
DERIVED = {"base_lr", "final_lr", "warmup_epochs", "start_warmup", "queue_length", "epoch_queue_starts",
           "freeze_prototypes_niters", "nmb_prototypes"}


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["plan", *TINY, *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_holds_every_key_the_issue_lists(capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_json(capsys, "--batch_size", "32", "--gpus_per_node", "8", "--price_per_gpu_hour", "2.5")
    assert JSON_KEYS <= set(plan)
    assert set(plan["derived"]) == DERIVED == set(plan["rules"])
    assert {"gib_per_gpu", "gpu_gib", "fits"} <= set(plan["memory"])
    assert {"images_per_s_per_gpu", "source"} <= set(plan["throughput"])
    assert {"hours", "gpu_hours", "cost"} <= set(plan["time"])
    assert plan["time"]["cost"] == pytest.approx(plan["time"]["gpu_hours"] * 2.5, abs=0.02)
    assert plan["throughput"]["source"] in ("measured", "estimated")
    assert any("h100 assumed" in note for note in plan["notes"])
    assert "ImageNet assumed" in plan["dataset"]["source"] and plan["dataset"]["images"] == 1_281_167


def test_the_published_recipes_through_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    small = plan_json(capsys, "--batch_size", "32", "--gpus_per_node", "8")["derived"]
    assert small["base_lr"] == pytest.approx(0.6) and small["queue_length"] == 3840
    assert small["freeze_prototypes_niters"] == 5005 and small["warmup_epochs"] == 0
    large = plan_json(capsys, "--batch_size", "64", "--gpus_per_node", "8", "--num_nodes", "8")["derived"]
    assert large["base_lr"] == pytest.approx(4.8) and large["queue_length"] == 0
    assert large["freeze_prototypes_niters"] == 313 and large["warmup_epochs"] == 10
    assert large["start_warmup"] == pytest.approx(0.3) and large["final_lr"] == pytest.approx(0.0048)


def test_a_batch_that_cannot_fit_exits_2_after_printing_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", *TINY, "--batch_size", "4096", "--gpu", "v100-16gb", "--gpu_memory_gib", "2"])
    captured = capsys.readouterr()
    assert code == 2
    assert "DOES NOT FIT" in captured.out and "recipe (flag, value, rule)" in captured.out
    assert "error: batch 4096 per GPU needs" in captured.err and "use --batch_size" in captured.err


def test_above_85_percent_is_a_warning_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    fitting = plan_json(capsys, "--batch_size", "64", "--gpu_memory_gib", "1000")["memory"]
    largest = fitting["largest_batch_per_gpu"]
    near = plan_json(capsys, "--batch_size", str(int(largest * 0.95)), "--gpu_memory_gib", "1000")
    assert near["memory"]["fits"] and near["memory"]["fraction"] > 0.85
    assert any("of the GPU's memory" in warning for warning in near["warnings"])


def test_a_given_learning_rate_is_kept_and_warned(capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_json(capsys, "--batch_size", "32", "--gpus_per_node", "8", "--base_lr", "4.8")
    assert plan["derived"]["base_lr"] == 4.8 and plan["given"] == ["base_lr"]
    assert any(w.startswith("--base_lr 4.8 (given) differs") for w in plan["warnings"])


def test_counts_come_from_a_staged_manifest(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from trainer.data.staging import stage_dataset
    from trainer.data.synthetic import make_shapes

    make_shapes(str(tmp_path / "src"), num_classes=3, train_per_class=20, val_per_class=2, image_size=32, seed=0)
    stage_dataset(str(tmp_path / "src"), str(tmp_path / "staged"), shard_size_mb=0.02, workers=1)
    plan = plan_json(capsys, "--batch_size", "8", "--gpus_per_node", "1", "--data_path", str(tmp_path / "staged"))
    assert plan["dataset"]["images"] == 60 and plan["dataset"]["classes"] == 3 and plan["dataset"]["staged"]
    assert plan["dataset"]["shards"] > 1 and "no listing" in plan["dataset"]["source"]
    assert plan["derived"]["freeze_prototypes_niters"] == 8  # one epoch: 60 / 8, rounded


def test_an_unknown_gpu_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpu", "tpu-v4"]) == 2
    assert "invalid choice: 'tpu-v4'" in capsys.readouterr().err


def test_bad_flags_are_refused_before_planning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *TINY, "--size_crops", "32"]) == 2  # two crop counts, one size
    assert "error: --nmb_crops, --size_crops" in capsys.readouterr().err


def test_a_preset_queue_that_the_cluster_breaks_is_derived_anew(capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_json(capsys, "--preset", "swav_200ep_bs256", "--batch_size", "64", "--gpus_per_node", "8")
    assert plan["derived"]["queue_length"] == 3584  # the preset's 3840 is no multiple of 512


def test_a_given_queue_the_cluster_breaks_is_refused_before_planning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *TINY, "--queue_length", "3840", "--batch_size", "64", "--gpus_per_node", "8"]) == 2
    assert "error: --queue_length 3840 is not a multiple of the global batch 512" in capsys.readouterr().err
