"""Resume from the newest intact full state; damaged checkpoints, weights, manifests and metrics are refused.

Damage is made in the stored files (bytes flipped or cut); crashes are a storage write that raises at one
step of a checkpoint save, as a kill there would leave the files. The commands run through the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.trainer.cli.refusal import refused
from trainer import storage
from trainer.cli import main
from trainer.data.staging import stage_dataset
from trainer.errors import UserError
from trainer.run.metrics import read_document, write_document
from trainer.run.resume import previous_url, resume_point, save_checkpoint

IDENTITY = {"command": "pretrain", "arch": "resnet_tiny"}
TINY = ["--preset", "demo_cpu", "--epochs", "1", "--batch_size", "8", "--workers", "0", "--max_steps", "2",
        "--log_freq", "1", "--size_crops", "32", "--nmb_crops", "2", "--arch", "resnet_tiny",
        "--checkpoint_every_steps", "1"]


def flip(path: Path) -> None:
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def garble_sidecar(path: Path) -> None:
    Path(storage.digest_url(str(path))).write_bytes(b"\x00 not a record")


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def two_saves(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint saved at step 1 and again at step 2: (latest, previous)."""
    latest = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(str(latest), {"step": 1}, IDENTITY)
    save_checkpoint(str(latest), {"step": 2}, IDENTITY)
    return latest, Path(previous_url(str(latest)))


def test_each_save_keeps_the_checkpoint_it_replaces(two_saves: tuple[Path, Path]) -> None:
    latest, previous = two_saves
    assert previous.name == "checkpoint.prev.pth.tar"
    assert storage.load_torch(str(previous))["step"] == 1 and storage.load_torch(str(latest))["step"] == 2
    assert resume_point(str(latest), IDENTITY)[0] == str(latest)


@pytest.mark.parametrize("damage", [flip, truncate, garble_sidecar])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(two_saves, damage, caplog) -> None:
    latest, previous = two_saves
    damage(latest)
    kept = previous.read_bytes()
    with caplog.at_level(logging.WARNING):
        url, state = resume_point(str(latest), IDENTITY)
    assert url == str(previous) and state["step"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(latest) in warnings[0] and str(previous) in warnings[0], warnings
    assert previous.read_bytes() == kept


def test_a_missing_latest_checkpoint_falls_back_to_the_previous_one(two_saves, caplog) -> None:
    latest, previous = two_saves
    latest.unlink()
    with caplog.at_level(logging.WARNING):
        assert resume_point(str(latest), IDENTITY) == (str(previous), {"step": 1, "identity": IDENTITY})
    assert any("does not exist" in r.getMessage() for r in caplog.records)


def test_both_damaged_is_refused_naming_both(two_saves) -> None:
    latest, previous = two_saves
    flip(latest)
    truncate(previous)
    with pytest.raises(UserError) as raised:
        resume_point(str(latest), IDENTITY)
    message = str(raised.value)
    assert "\n" not in message and f"{latest} is damaged" in message and f"{previous} is damaged" in message


def test_a_damaged_only_checkpoint_is_refused_not_restarted(tmp_path: Path) -> None:
    latest = tmp_path / "checkpoint.pth"
    save_checkpoint(str(latest), {"step": 1}, IDENTITY)
    flip(latest)
    with pytest.raises(UserError, match=r"is damaged.*there is no previous checkpoint .*checkpoint\.prev\.pth "):
        resume_point(str(latest), IDENTITY)


def test_the_previous_checkpoint_is_identity_checked_too(two_saves) -> None:
    latest, _ = two_saves
    flip(latest)
    with pytest.raises(UserError, match=r"checkpoint\.prev\.pth\.tar belongs to a run with other settings"):
        resume_point(str(latest), {**IDENTITY, "arch": "resnet18"})


# A save over an existing checkpoint is six writes: the previous copy's sidecar, the copy, its final sidecar,
# then the latest's sidecar listing old and new, the latest, its final sidecar.
@pytest.mark.parametrize("step", range(1, 7))
def test_a_crash_at_any_step_of_a_save_leaves_a_full_state(two_saves, monkeypatch, step: int) -> None:
    from tests.trainer.test_storage_integrity import Killed, crash_at

    latest, _ = two_saves
    with monkeypatch.context() as patch:
        crash_at(patch, step)
        with pytest.raises(Killed):
            save_checkpoint(str(latest), {"step": 3}, IDENTITY)
    url, state = resume_point(str(latest), IDENTITY)
    assert url == str(latest) and state["step"] == (3 if step == 6 else 2)


def test_a_damaged_metrics_document_is_refused(tmp_path: Path) -> None:
    write_document(str(tmp_path), {"command": "eval-linear", "top1": 50.0})
    assert read_document(str(tmp_path))["top1"] == 50.0
    flip(tmp_path / "metrics.json")
    with pytest.raises(storage.IntegrityError, match="metrics.json is damaged"):
        read_document(str(tmp_path))


@pytest.fixture(scope="module")
def finished_run(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dump = tmp_path_factory.mktemp("integrity") / "run"
    assert main(["pretrain", "--data_path", str(shapes_dir), "--dump_path", str(dump), *TINY]) == 0
    return dump


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """The finished run copied as an operator would (`cp -r`): sidecars travel with their files."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_pretrain_resumes_from_the_previous_checkpoint_when_the_latest_is_damaged(run_copy, shapes_dir, capsys):
    assert (run_copy / "checkpoint.prev.pth.tar.sha256").exists()
    flip(run_copy / "checkpoint.pth.tar")
    code = main(["pretrain", "--data_path", str(shapes_dir), "--dump_path", str(run_copy), *TINY, "--max_steps", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"resumed from {run_copy / 'checkpoint.prev.pth.tar'} at step" in err
    assert f"{run_copy / 'checkpoint.pth.tar'} is damaged" in err
    assert storage.load_torch(str(run_copy / "checkpoint.pth.tar"))["step"] == 3  # rewritten whole


def test_pretrain_refuses_when_no_checkpoint_is_intact(run_copy, shapes_dir, capsys):
    flip(run_copy / "checkpoint.pth.tar")
    truncate(run_copy / "checkpoint.prev.pth.tar")
    kept = {name: value for name, value in digests(run_copy).items() if "checkpoint" in name}
    line = refused(capsys, ["pretrain", "--data_path", shapes_dir, "--dump_path", run_copy, *TINY],
                   "checkpoint.prev.pth.tar", [run_copy / "checkpoints", run_copy / "tb"])
    assert "no intact checkpoint to resume" in line and "checkpoint.pth.tar is damaged" in line
    assert {name: value for name, value in digests(run_copy).items() if "checkpoint" in name} == kept


def test_eval_refuses_a_damaged_backbone(finished_run, shapes_dir, tmp_path, capsys):
    weights = Path(shutil.copytree(finished_run, tmp_path / "weights"))
    flip(weights / "backbone.pth")
    line = refused(capsys, ["eval-linear", "--data_path", shapes_dir, "--dump_path", tmp_path / "eval",
                            "--pretrained", weights / "backbone.pth", "--arch", "resnet_tiny", "--image_size", "32",
                            "--workers", "0", "--device", "cpu"], "backbone.pth is damaged", [weights])
    assert "sha256" in line


@pytest.fixture(scope="module")
def staged(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("staged") / "shapes"
    stage_dataset(str(shapes_dir), str(dest), workers=1, progress=lambda message: None)
    return dest


def test_pretrain_refuses_a_damaged_manifest(staged, tmp_path, capsys):
    data = Path(shutil.copytree(staged, tmp_path / "data"))
    flip(data / "manifest.json")
    refused(capsys, ["pretrain", "--data_path", data, "--dump_path", tmp_path / "run", *TINY],
            "manifest.json is damaged", [data])


def test_staging_again_replaces_a_damaged_manifest(staged, shapes_dir, tmp_path):
    data = Path(shutil.copytree(staged, tmp_path / "data"))
    flip(data / "manifest.json")
    messages: list[str] = []
    stage_dataset(str(shapes_dir), str(data), workers=1, progress=messages.append)
    assert not any("reused" in message for message in messages)
    assert json.loads(storage.read_verified(str(data / "manifest.json")))["complete"] is True


def test_a_damaged_shard_record_is_staged_again_not_reused(shapes_dir, tmp_path):
    dest = tmp_path / "staged"
    stage_dataset(str(shapes_dir), str(dest), shard_size_mb=0.01, workers=1, progress=lambda message: None)
    records = sorted((dest / "train").glob("*.json"))
    assert len(records) > 2
    flip(records[1])
    (dest / "manifest.json").unlink()  # staging again goes over the shards instead of reusing the dataset
    messages: list[str] = []
    stage_dataset(str(shapes_dir), str(dest), shard_size_mb=0.01, workers=1, progress=messages.append)
    assert f"{len(records) - 1} shards done by an earlier run, 1 to write" in " ".join(messages), messages
    assert storage.read_verified(str(records[1]))


def test_a_damaged_archive_index_record_is_rebuilt_with_a_warning(shapes_dir, tmp_path, caplog):
    import tarfile

    from trainer.data.archives import cached_index

    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(shapes_dir / "train", arcname="train")
    index_dir = str(tmp_path / "index")
    key, members = cached_index(str(archive), index_dir)
    (record,) = Path(index_dir).glob("*.json")
    flip(record)
    with caplog.at_level(logging.WARNING):
        assert cached_index(str(archive), index_dir) == (key, members)
    assert any("indexing it again" in r.getMessage() and "is damaged" in r.getMessage() for r in caplog.records)
    assert storage.read_verified(str(record))  # rewritten whole, with its digest


def test_pretrain_refuses_a_damaged_split_index(staged, tmp_path, capsys):
    data = Path(shutil.copytree(staged, tmp_path / "data"))
    flip(data / "train" / "index.npz")
    refused(capsys, ["pretrain", "--data_path", data, "--dump_path", tmp_path / "run", *TINY],
            "index.npz is damaged", [data])


def test_s3_resume_falls_back_to_the_previous_checkpoint(s3_server, caplog):
    import boto3

    latest = storage.join(s3_server.bucket("integrity-resume"), "run", "checkpoint.pth.tar")
    save_checkpoint(latest, {"step": 1}, IDENTITY)
    save_checkpoint(latest, {"step": 2}, IDENTITY)
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    client.put_object(Bucket="integrity-resume", Key="run/checkpoint.pth.tar", Body=b"torn")
    with caplog.at_level(logging.WARNING):
        url, state = resume_point(latest, IDENTITY)
    assert url == previous_url(latest) and state["step"] == 1
    assert any(f"{latest} is damaged" in r.getMessage() for r in caplog.records)
    client.delete_object(Bucket="integrity-resume", Key="run/checkpoint.prev.pth.tar")
    with pytest.raises(UserError, match=r"no intact checkpoint to resume: s3://\S+ is damaged.*there is no previous"):
        resume_point(latest, IDENTITY)
