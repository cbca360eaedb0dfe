"""`pretrain --auto_scale`: derived flags applied where not given, given ones kept; the plan in params.json and in a
`plan` record of metrics.jsonl; without the flag nothing changes."""

from __future__ import annotations

import json

import pytest

from trainer.cli import build_parser, main
from trainer.errors import UserError
from trainer.plan.planner import planned_config
from trainer.run.metrics import read_records

SMALL = ["--arch", "resnet_tiny", "--nmb_crops", "2", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.3",
         "0.1", "--max_scale_crops", "1", "0.3", "--hidden_mlp", "64", "--feat_dim", "16", "--data_path", "/not/staged"]


def planned(*argv: str, world_size: int = 8):
    return planned_config(build_parser("pretrain").parse_args([*SMALL, *argv]), world_size, listing=False)


def test_without_explicit_flags_the_preset_is_scaled_to_the_global_batch() -> None:
    cfg, plan = planned("--preset", "swav_200ep_bs256", "--auto_scale", "--batch_size", "64")  # 8 x 64 = 512
    assert plan is not None and plan.global_batch == 512
    assert cfg.base_lr == pytest.approx(0.6 * 2 ** 0.75) and cfg.final_lr == pytest.approx(cfg.base_lr / 1000)
    assert cfg.queue_length == 3584 and cfg.freeze_prototypes_niters == 2502  # ImageNet: /not/staged is not listed
    assert cfg.warmup_epochs == 2


def test_explicit_flags_are_kept_and_the_rest_derived(tmp_path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("queue_length: 0\n")
    cfg, plan = planned("--preset", "swav_200ep_bs256", "--auto_scale", "--batch_size", "64", "--base_lr", "0.3",
                        "--config", str(config_file))
    assert cfg.base_lr == 0.3 and cfg.queue_length == 0  # command line and config file: kept
    assert cfg.final_lr == pytest.approx(0.3 / 1000)  # not given: derived, from the given base_lr
    assert cfg.warmup_epochs == 2 and cfg.freeze_prototypes_niters == 2502  # not given: derived
    assert {"base_lr", "queue_length"} == set(plan.to_json()["given"])
    assert any(w.startswith("--base_lr 0.3 (given) differs") for w in plan.warnings)


def test_without_auto_scale_nothing_is_derived() -> None:
    cfg, plan = planned("--preset", "swav_200ep_bs256", "--batch_size", "64", world_size=4)
    assert plan is None and cfg.base_lr == 0.6 and cfg.queue_length == 3840 and not hasattr(cfg, "auto_scale")
    with pytest.raises(UserError, match="--queue_length 3840 is not a multiple of the global batch 512"):
        planned("--preset", "swav_200ep_bs256", "--batch_size", "64", world_size=8)  # --auto_scale derives 3584


def test_a_run_records_its_plan(shapes_dir, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "run"
    argv = ["pretrain", "--auto_scale", "--data_path", str(shapes_dir / "train"), "--dump_path", str(dump),
            *SMALL[:-2], "--batch_size", "8", "--epochs", "2", "--workers", "0", "--max_steps", "2",
            "--nmb_prototypes", "20", "--use_fp16", "false"]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    params = json.loads((dump / "params.json").read_text())
    assert params["plan"]["derived"]["freeze_prototypes_niters"] == 8  # one epoch: 64 images / batch 8
    assert params["freeze_prototypes_niters"] == 8 and params["nmb_prototypes"] == 20  # derived; given, kept
    assert params["base_lr"] == pytest.approx(0.6 * (8 / 256) ** 0.75)
    assert "EXTRAPOLATED" in params["plan"]["rules"]["base_lr"]
    (record,) = read_records(str(dump), "plan")
    assert record["step"] == 0 and record["derived"] == params["plan"]["derived"]
    assert "auto_scale: --base_lr" in capsys.readouterr().err


def test_the_launchers_check_accepts_what_auto_scale_derives() -> None:
    from trainer.cli import check_command

    argv = [*SMALL, "--preset", "swav_200ep_bs256", "--batch_size", "64"]
    with pytest.raises(UserError, match="--queue_length 3840 is not a multiple"):
        check_command("pretrain", argv, world_size=8)
    check_command("pretrain", [*argv, "--auto_scale"], world_size=8)  # the queue becomes 3584: accepted
