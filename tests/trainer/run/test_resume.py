"""The one resume mechanism: identities compared before anything loads, a refusal names every change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.errors import UserError
from trainer.run.lock import RunLock
from trainer.run.resume import differences, identity_of, legacy_identity, load_for_resume, save_checkpoint

TINY = ["--preset", "demo_cpu", "--epochs", "1", "--batch_size", "8", "--workers", "0", "--max_steps", "2",
        "--log_freq", "1", "--size_crops", "32", "--nmb_crops", "2"]


def test_identity_leaves_out_the_changeable_flags_and_normalises_values():
    identity = identity_of({"arch": "resnet50", "workers": 10, "size_crops": (224, 96)}, ["workers"])
    assert identity == {"arch": "resnet50", "size_crops": [224, 96]}


def test_differences_list_every_flag_old_to_new():
    assert differences({"optimizer": "lars", "queue_length": 0, "arch": "r"},
                       {"optimizer": "adamw", "queue_length": 3840, "arch": "r", "new": 1}) == [
        "--new (unset) -> 1", "--optimizer lars -> adamw", "--queue_length 0 -> 3840"]


def test_a_checkpoint_of_another_run_is_refused_before_loading(tmp_path):
    url = str(tmp_path / "checkpoint.pth.tar")
    save_checkpoint(url, {"step": 3}, {"command": "pretrain", "optimizer": "lars"})
    assert load_for_resume(url, {"command": "pretrain", "optimizer": "lars"})["step"] == 3
    with pytest.raises(UserError, match=r"--optimizer lars -> adamw.*params.json"):
        load_for_resume(url, {"command": "pretrain", "optimizer": "adamw"})
    assert load_for_resume(str(tmp_path / "absent.pth"), {"command": "pretrain"}) is None


def test_a_checkpoint_without_identity_is_refused_unless_its_flags_can_be_read(tmp_path):
    url = str(tmp_path / "old.pth")
    save_checkpoint(url, {"args": {"arch": "resnet18", "workers": 4}}, {})
    current = {"command": "pretrain", "arch": "resnet18", "blur_prob": 0.5}
    import torch

    state = torch.load(url, weights_only=True)
    del state["identity"]
    torch.save(state, url)
    Path(url + ".sha256").unlink()  # written before identities (and digests) were recorded
    with pytest.raises(UserError, match="records no run identity"):
        load_for_resume(url, current)
    derive = legacy_identity(current, lambda saved: {"command": "pretrain", **saved["args"]}, ["workers"])
    assert load_for_resume(url, current, legacy_identity=derive) is not None  # blur_prob predates it
    with pytest.raises(UserError, match="--arch resnet18 -> resnet50"):
        load_for_resume(url, {**current, "arch": "resnet50"},
                        legacy_identity=legacy_identity({**current, "arch": "resnet50"},
                                                        lambda saved: {"command": "pretrain", **saved["args"]}))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(shapes_dir, tmp_path_factory) -> Path:
    dump = tmp_path_factory.mktemp("resume") / "run"
    assert main(["pretrain", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--arch", "resnet_tiny",
                 *TINY]) == 0
    return dump


@pytest.mark.parametrize(("flags", "expected"), [
    (["--optimizer", "lars"], "--optimizer adamw -> lars"),
    (["--queue_length", "16", "--epoch_queue_starts", "0"], "--queue_length 0 -> 16"),
    (["--arch", "resnet18"], "--arch resnet_tiny -> resnet18"),
    (["--nmb_prototypes", "40"], "--nmb_prototypes 60 -> 40"),
    (["--size_crops", "48"], "--size_crops 32 -> 48"),
    (["--seed", "5"], "--seed 31 -> 5"),
])
def test_pretrain_refuses_to_resume_a_changed_run_and_keeps_its_files(finished_run, flags, expected, capsys):
    before = {name: _digest(finished_run / name) for name in ("checkpoint.pth.tar", "params.json",
                                                               "metrics.jsonl", "backbone.pth")}
    argv = ["pretrain", "--data_path", "unused", "--dump_path", str(finished_run), "--arch", "resnet_tiny", *TINY]
    code = main([*argv, *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert {name: _digest(finished_run / name) for name in before} == before


def test_pretrain_resumes_when_only_changeable_flags_differ(finished_run, shapes_dir, capsys):
    code = main(["pretrain", "--data_path", str(shapes_dir), "--dump_path", str(finished_run), "--arch",
                 "resnet_tiny", *TINY, "--log_freq", "2", "--checkpoint_freq", "3", "--max_steps", "3"])
    assert code == 0, capsys.readouterr().err
    assert "resumed from" in capsys.readouterr().err


def test_a_second_run_on_a_held_dump_path_is_refused_and_writes_nothing(shapes_dir, tmp_path, capsys):
    dump = tmp_path / "held"
    with RunLock(str(dump), "pretrain"):
        code = main(["pretrain", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--arch",
                     "resnet_tiny", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "another run holds" in err and "Traceback" not in err, err
    assert not (dump / "params.json").exists() and not (dump / "checkpoint.pth.tar").exists()
    assert not (dump / "metrics.jsonl").exists()
