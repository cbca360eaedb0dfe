"""`unmix-swav pretrain`: every bad flag or YAML value is refused before any work, in one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from refusal import refused

from trainer import config
from trainer.errors import UserError

# (flags added to the demo recipe, what the refusal must name)
BAD_FLAGS = [
    (["--max_steps", "-3"], "--max_steps"),
    (["--hidden_mlp", "-5"], "--hidden_mlp"),
    (["--nmb_prototypes", "1"], "--nmb_prototypes"),
    (["--nmb_prototypes", "0"], "--nmb_prototypes"),
    (["--base_lr", "-0.1"], "--base_lr"),
    (["--final_lr=-1e-5"], "--final_lr"),
    (["--start_warmup", "-1"], "--start_warmup"),
    (["--wd=-1e-4"], "--wd"),
    (["--workers", "-1"], "--workers"),
    (["--batch_size", "1"], "--batch_size"),
    (["--batch_size", "0"], "--batch_size"),
    (["--epochs", "0"], "--epochs"),
    (["--checkpoint_freq", "0"], "--checkpoint_freq"),
    (["--checkpoint_every_steps", "-1"], "--checkpoint_every_steps"),
    (["--epoch_queue_starts", "-1"], "--epoch_queue_starts"),
    (["--freeze_prototypes_niters", "-1"], "--freeze_prototypes_niters"),
    (["--warmup_epochs", "-1"], "--warmup_epochs"),
    (["--warmup_epochs", "50"], "--warmup_epochs"),  # the demo runs 40 epochs
    (["--size_crops", "8"], "--size_crops"),
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--epsilon", "-0.05"], "--epsilon"),
    (["--epsilon", "inf"], "--epsilon"),
    (["--min_scale_crops", "0"], "--min_scale_crops"),
    (["--max_scale_crops", "1.5"], "--max_scale_crops"),
    (["--min_scale_crops", "0.9", "--max_scale_crops", "0.5"], "--min_scale_crops"),
    (["--log_freq", "0"], "--log_freq"),
    (["--knn_freq", "0"], "--knn_freq"),
    (["--sinkhorn_iterations", "0"], "--sinkhorn_iterations"),
    (["--feat_dim", "0"], "--feat_dim"),
    (["--queue_length", "-32"], "--queue_length"),
    (["--queue_length", "48"], "--queue_length"),  # not a multiple of the batch of 32
    (["--unmix_prob", "2"], "--unmix_prob"),
    (["--unmix_beta", "0"], "--unmix_beta"),
    (["--blur_prob", "-0.5"], "--blur_prob"),
    (["--nmb_crops", "0", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.3", "0.1",
      "--max_scale_crops", "1", "0.3"], "--nmb_crops"),
    (["--size_crops", "32", "16"], "--size_crops"),  # two resolutions, one count
    (["--crops_for_assign", "0", "0"], "--crops_for_assign"),
    (["--crops_for_assign", "5"], "--crops_for_assign"),
    (["--aug_backend", "gpu"], "--aug_backend"),
    (["--sync_bn", "horovod"], "--sync_bn"),
    (["--arch", "vit_b"], "--arch"),
]

# (YAML text of --config, the key the refusal must name)
BAD_YAML = [
    ("batch_size: eight\n", "batch_size"),
    ("epochs: 7.5\n", "epochs"),
    ("epochs: true\n", "epochs"),
    ("epochs: [1, 2]\n", "epochs"),
    ("epochs:\n", "epochs"),
    ("base_lr: fast\n", "base_lr"),
    ("use_fp16: maybe\n", "use_fp16"),
    ("nmb_crops: [two]\n", "nmb_crops"),
    ("nmb_crops: []\n", "nmb_crops"),
    ("size_crops: {a: 1}\n", "size_crops"),
    ("max_steps: -3\n", "max_steps"),
    ("hidden_mlp: -5\n", "hidden_mlp"),
    ("nmb_prototypes: 1\n", "nmb_prototypes"),
    ("epochz: 3\n", "epochz"),
    ("- epochs\n", "--config"),
]


def pretrain(shapes_dir: Path, dump: Path, *flags: str) -> list[str]:
    return ["pretrain", "--preset", "demo_cpu", "--device", "cpu", "--data_path", str(shapes_dir),
            "--dump_path", str(dump), *flags]


@pytest.fixture
def resumable_dump(tmp_path: Path) -> Path:
    """A dump path holding an earlier run's files: a refused rerun must leave their bytes as they were."""
    dump = tmp_path / "earlier"
    dump.mkdir()
    (dump / "checkpoint.pth.tar").write_bytes(b"checkpoint bytes")
    (dump / "params.json").write_text('{"epochs": 40}\n')
    return dump


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS)
def test_bad_flag_is_refused_before_any_work(capsys, shapes_dir: Path, tmp_path: Path, flags: list[str],
                                             named: str) -> None:
    dump = tmp_path / "run"
    refused(capsys, pretrain(shapes_dir, dump, *flags), named, [dump])


@pytest.mark.parametrize(("text", "named"), BAD_YAML)
def test_bad_yaml_value_is_refused_before_any_work(capsys, shapes_dir: Path, tmp_path: Path, text: str,
                                                   named: str) -> None:
    (tmp_path / "run.yaml").write_text(text)
    dump = tmp_path / "run"
    refused(capsys, pretrain(shapes_dir, dump, "--config", str(tmp_path / "run.yaml")), named, [dump])


@pytest.mark.parametrize(("flags", "named"), [(["--max_steps", "-3"], "--max_steps"),
                                              (["--nmb_prototypes", "1"], "--nmb_prototypes"),
                                              (["--wd", "-1"], "--wd")])
def test_refusal_leaves_an_earlier_run_untouched(capsys, shapes_dir: Path, resumable_dump: Path,
                                                 flags: list[str], named: str) -> None:
    refused(capsys, pretrain(shapes_dir, resumable_dump, *flags), named, [resumable_dump])


def test_message_says_the_accepted_range(capsys, shapes_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "run"
    line = refused(capsys, pretrain(shapes_dir, dump, "--max_steps", "-3"), "--max_steps", [dump])
    assert line == "error: --max_steps -3 is out of range; use a value >= 0 (0: no limit)"
    (tmp_path / "c.yaml").write_text("batch_size: eight\n")
    line = refused(capsys, pretrain(shapes_dir, tmp_path / "run", "--config", str(tmp_path / "c.yaml")), "batch_size",
                   [tmp_path / "run"])
    assert "'eight' is not an integer" in line


def resolved(tmp_path: Path, text: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    (tmp_path / "c.yaml").write_text(text)
    return config.resolve(parser.parse_args(["--config", str(tmp_path / "c.yaml")]))


def test_yaml_values_convert_as_the_command_line_does(tmp_path: Path) -> None:
    cfg = resolved(tmp_path, "nmb_crops: 2\nsize_crops: [32]\nbase_lr: 1e-4\nuse_fp16: yes\nrun_swav: 'off'\n"
                             "hidden_mlp: 0\nmax_steps: 0\n")
    assert cfg.nmb_crops == [2]  # a scalar is the one value of a list flag, as `--nmb_crops 2` gives
    assert cfg.size_crops == [32]
    assert cfg.base_lr == 1e-4  # YAML reads 1e-4 as text; float() reads it as the flag does
    assert cfg.use_fp16 is True and cfg.run_swav is False
    assert (cfg.hidden_mlp, cfg.max_steps) == (0, 0)  # a linear head; no step limit


def test_zero_steps_per_epoch_is_refused() -> None:
    assert config.check_steps_per_epoch(64, batch_size=32, world_size=1) == 2
    assert config.check_steps_per_epoch(64, batch_size=16, world_size=2) == 2
    with pytest.raises(UserError, match=r"--batch_size 32 x 2 processes.*use --batch_size 24 or less"):
        config.check_steps_per_epoch(48, batch_size=32, world_size=2)
    with pytest.raises(UserError, match="add data"):
        config.check_steps_per_epoch(1, batch_size=2, world_size=1)


def test_prototype_count_warning() -> None:
    assert config.prototype_count_warning(60, 6) is None
    assert config.prototype_count_warning(40, 4) is None
    warning = config.prototype_count_warning(10, 4)
    assert warning is not None and "--nmb_prototypes 10" in warning and "40" in warning
