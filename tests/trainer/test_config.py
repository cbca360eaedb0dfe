"""Every bad value fails before any work: one line on stderr, exit code 2, no traceback."""

import pytest

from trainer.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(("flags", "expected"), [
    (["--nmb_crops", "2", "6", "--size_crops", "224"], "need the same number of values"),
    (["--nmb_crops", "3", "--size_crops", "32", "--min_scale_crops", "0.2", "--max_scale_crops", "1"],
     "odd number"),
    (["--nmb_crops", "1", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.1",
      "--max_scale_crops", "1", "0.2", "--run_swav", "false"], "odd number"),
    (["--crops_for_assign", "0", "9"], "--crops_for_assign"),
    (["--queue_length", "100", "--batch_size", "64"], "not a multiple of the global batch 64"),
    (["--arch", "vgg16"], "--arch 'vgg16' is not known"),
    (["--preset", "swav_9000ep"], "--preset 'swav_9000ep' is not known"),
    (["--amp_dtype", "fp8"], "--amp_dtype"),
    (["--optimizer", "adam"], "--optimizer 'adam' is not known; use one of lars, adamw"),
    (["--blur_prob", "1.5"], "--blur_prob 1.5 is not a probability"),
])
def test_bad_values_are_refused_with_one_line(capsys, tmp_path, flags, expected):
    code, err = run_cli(capsys, "pretrain", "--data_path", str(tmp_path), "--dump_path", str(tmp_path / "out"),
                        *flags)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_queue_error_says_what_would_work(capsys, tmp_path):
    _, err = run_cli(capsys, "pretrain", "--data_path", str(tmp_path), "--queue_length", "3840",
                     "--batch_size", "100")
    assert "use 3800 or 3900" in err


def test_missing_and_empty_dataset(capsys, tmp_path):
    code, err = run_cli(capsys, "pretrain", "--preset", "demo_cpu", "--data_path", str(tmp_path / "nope"),
                        "--dump_path", str(tmp_path / "out"))
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    code, err = run_cli(capsys, "pretrain", "--preset", "demo_cpu", "--data_path", str(tmp_path / "empty"),
                        "--dump_path", str(tmp_path / "out2"))
    assert code == 2 and "no images" in err


def test_precedence_defaults_preset_config_flags(tmp_path):
    import argparse

    from trainer import config

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    (tmp_path / "c.yaml").write_text("preset: swav_200ep_bs256\nepochs: 7\nbase_lr: 0.1\n")
    cfg = config.resolve(parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--base_lr", "0.2"]))
    assert cfg.queue_length == 3840  # from the preset
    assert cfg.epochs == 7  # the file beats the preset
    assert cfg.base_lr == 0.2  # the flag beats the file
    assert cfg.temperature == 0.1 and cfg.seed == 31  # the seed's defaults
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    from trainer.errors import UserError

    with pytest.raises(UserError, match="unknown keys"):
        config.resolve(parser.parse_args(["--config", str(tmp_path / "bad.yaml")]))


def test_seed_command_line_is_accepted():
    import argparse

    from trainer import config

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    seed_argv = ("--data_path /x --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05 --max_scale_crops 1."
                 " 0.14 --crops_for_assign 0 1 --temperature 0.1 --epsilon 0.05 --sinkhorn_iterations 3 --feat_dim 128"
                 " --nmb_prototypes 3000 --queue_length 3840 --epoch_queue_starts 15 --epochs 200 --batch_size 64"
                 " --base_lr 0.6 --final_lr 0.0006 --freeze_prototypes_niters 5005 --wd 0.000001 --warmup_epochs 0"
                 " --dist_url tcp://node:40000 --arch resnet50 --use_fp16 true --sync_bn apex --dump_path ./exp"
                 " --world_size 64 --rank 3 --local_rank 1 --hidden_mlp 2048 --workers 10 --checkpoint_freq 25"
                 " --seed 31 --run_swav false --unmix_prob 0.0 --unmix_beta 1.0 --start_warmup 0.3").split()
    cfg = config.resolve(parser.parse_args(seed_argv))
    config.validate(cfg, world_size=4)
    assert cfg.nmb_crops == [2, 6] and cfg.use_fp16 is True and cfg.run_swav is False


def test_the_seeds_queue_at_two_nodes_names_the_scale_it_was_written_for():
    """The seed's --queue_length 3840 with batch 32 fits 8 processes (1 node x 8 GPUs), not the pipeline's
    default 2 x 8: the refusal says so."""
    import argparse

    import pytest

    from trainer.config import check_queue
    from trainer.errors import UserError

    seed = argparse.Namespace(queue_length=3840, batch_size=32)
    check_queue(seed, 8)
    with pytest.raises(UserError, match=r"use 3584 or 4096, or 0 for no queue, or run it on 8 processes "
                                        r"\(global batch 256\)"):
        check_queue(seed, 16)
