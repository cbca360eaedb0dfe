"""trainer.storage's verified files: a sha256 sidecar written with the file, checked on every read.

Damage is made the way it happens (bytes flipped or cut in the stored file, a sidecar overwritten or lost);
crashes between the steps of a write are a write that raises at that step, as a kill there would leave it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch

from trainer import storage


def _flip_middle(data: bytes, count: int = 64) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + count]) + data[middle + count:]


def _checkpoint(step: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.full((64, 64), float(step))}, "step": step}, buffer)
    return buffer.getvalue()


DAMAGE = [
    pytest.param(_flip_middle, id="64-bytes-flipped-mid-file"),
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: data + b"\0", id="one-byte-appended"),
    pytest.param(lambda data: _checkpoint(99)[: len(data)].ljust(len(data), b"\0"), id="other-content-same-size"),
]


@pytest.fixture
def torch_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts torch.load calls: a damaged file must be refused before torch reads a byte of it."""
    calls: list[int] = []
    real = torch.load

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def _assert_one_line_naming(error: BaseException, *names: str) -> None:
    message = str(error)
    assert "\n" not in message
    for name in names:
        assert name in message, message


def test_a_verified_file_has_a_sidecar_and_reads_back(tmp_path: Path) -> None:
    url = str(tmp_path / "run" / "metrics.json")
    storage.write_verified(url, '{"top1": 1}\n')
    record = json.loads(Path(storage.digest_url(url)).read_text())
    assert record["file"] == "metrics.json" and len(record["accept"]) == 1
    assert storage.read_verified(url) == b'{"top1": 1}\n'
    storage.write_verified(url, '{"top1": 2}\n')
    assert len(json.loads(Path(storage.digest_url(url)).read_text())["accept"]) == 1  # only the new digest
    assert storage.read_verified(url) == b'{"top1": 2}\n'


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_refused_before_torch_reads_it(tmp_path: Path, damage, torch_loads) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    storage.write_verified(str(path), _checkpoint(1))
    original = path.read_bytes()
    path.write_bytes(damage(original))
    with pytest.raises(storage.IntegrityError) as raised:
        storage.load_torch(str(path))
    expected = storage._fingerprint(original)["sha256"][:12]
    found = storage._fingerprint(path.read_bytes())["sha256"][:12]
    _assert_one_line_naming(raised.value, str(path), f"sha256 is {found}", f"recorded {expected}")
    assert raised.value.exit_code == 2 and torch_loads == []


SIDECAR_DAMAGE = [
    pytest.param(b"\x00\xff garbage", id="garbage"),
    pytest.param(b"", id="empty"),
    pytest.param(b'{"accept": []}', id="no-digest"),
    pytest.param(b'{"accept": [{"sha256": "abc", "size": 3}]}', id="digest-too-short"),
    pytest.param(b'["not", "a", "record"]', id="wrong-shape"),
]


@pytest.mark.parametrize("sidecar", SIDECAR_DAMAGE)
def test_a_damaged_sidecar_refuses_the_file_naming_the_sidecar(tmp_path: Path, sidecar: bytes, torch_loads) -> None:
    url = str(tmp_path / "backbone.pth")
    storage.write_verified(url, _checkpoint(1))
    Path(storage.digest_url(url)).write_bytes(sidecar)
    with pytest.raises(storage.IntegrityError) as raised:
        storage.load_torch(url)
    _assert_one_line_naming(raised.value, storage.digest_url(url), "delete")
    assert torch_loads == []


def test_a_sidecar_of_other_content_refuses_the_file(tmp_path: Path) -> None:
    url, other = str(tmp_path / "backbone.pth"), str(tmp_path / "other.pth")
    storage.write_verified(url, _checkpoint(1))
    storage.write_verified(other, _checkpoint(2))
    Path(storage.digest_url(url)).write_bytes(Path(storage.digest_url(other)).read_bytes())
    with pytest.raises(storage.IntegrityError, match="is damaged"):
        storage.read_verified(url)


def test_a_file_without_sidecar_loads_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old-checkpoint.pth.tar"
    path.write_bytes(_checkpoint(4))  # written before digests existed
    with caplog.at_level(logging.WARNING, logger="trainer.storage"):
        assert storage.load_torch(str(path))["step"] == 4
        assert storage.load_torch(str(path))["step"] == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "unverified" in warnings[0]


def test_files_users_write_themselves_load_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("cat\ndog\n")
    with caplog.at_level(logging.WARNING, logger="trainer.storage"):
        assert storage.read_verified(str(path), unrecorded_ok=True) == b"cat\ndog\n"
    assert not caplog.records


class Killed(Exception):
    """A write that stops here, as a kill at this point would leave the files."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the `step`-th storage write (1-based: a sidecar, a data file or a local copy) raise Killed."""
    count = [0]

    def counted(real):
        def write(*args):
            count[0] += 1
            if count[0] == step:
                raise Killed(f"killed at write {step}")
            return real(*args)
        return write

    monkeypatch.setattr(storage, "atomic_write_bytes", counted(storage.atomic_write_bytes))
    monkeypatch.setattr(storage, "_local_copy", counted(storage._local_copy))


# A rewrite is three writes: the sidecar listing old and new, the file, the sidecar listing the new only.
@pytest.mark.parametrize(("step", "survivor"), [(1, 1), (2, 1), (3, 2)],
                         ids=["before-sidecar", "after-sidecar-before-file", "after-file-before-final-sidecar"])
def test_a_crash_inside_a_rewrite_never_refuses_the_good_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              step: int, survivor: int) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    storage.save_torch({"step": 1}, str(path))
    with monkeypatch.context() as patch:
        crash_at(patch, step)
        with pytest.raises(Killed):
            storage.save_torch({"step": 2}, str(path))
    assert storage.load_torch(str(path))["step"] == survivor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth.tar", "checkpoint.pth.tar.sha256"]
    path.write_bytes(_flip_middle(path.read_bytes()))  # damage in that state is still caught
    with pytest.raises(storage.IntegrityError):
        storage.load_torch(str(path))


def test_a_crash_inside_a_first_write_leaves_a_file_that_loads_unverified(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "backbone.pth"
    with monkeypatch.context() as patch:
        crash_at(patch, 2)  # the file landed, its sidecar did not
        with pytest.raises(Killed):
            storage.save_torch({"step": 1}, str(path))
    assert storage.load_torch(str(path))["step"] == 1
    storage.save_torch({"step": 2}, str(path))  # the next write records it again
    assert Path(storage.digest_url(str(path))).exists() and storage.load_torch(str(path))["step"] == 2


def test_repeated_crashes_keep_every_possible_digest_until_a_write_completes(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "metrics.json")
    storage.write_verified(url, "0")
    for text in ("1", "2"):
        with monkeypatch.context() as patch:
            crash_at(patch, 3)
            with pytest.raises(Killed):
                storage.write_verified(url, text)
        assert storage.read_verified(url) == text.encode()
    assert len(json.loads(Path(storage.digest_url(url)).read_text())["accept"]) == 3
    storage.write_verified(url, "3")
    assert len(json.loads(Path(storage.digest_url(url)).read_text())["accept"]) == 1


def test_a_local_copy_keeps_its_bytes_when_the_source_is_rewritten(tmp_path: Path) -> None:
    source, copy = str(tmp_path / "checkpoint.pth.tar"), str(tmp_path / "checkpoint.prev.pth.tar")
    storage.save_torch({"step": 1}, source)
    storage.copy_verified(source, copy)
    storage.save_torch({"step": 2}, source)
    assert storage.load_torch(copy)["step"] == 1 and storage.load_torch(source)["step"] == 2


def test_copying_an_unrecorded_file_drops_the_stale_sidecar_of_the_destination(tmp_path: Path) -> None:
    source, copy = tmp_path / "legacy.pth", tmp_path / "copy.pth"
    storage.save_torch({"step": 1}, str(copy))
    source.write_bytes(_checkpoint(5))
    storage.copy_verified(str(source), str(copy))
    assert not Path(storage.digest_url(str(copy))).exists()
    assert storage.load_torch(str(copy))["step"] == 5


def test_s3_damage_is_refused_and_copies_verify(s3_server, caplog: pytest.LogCaptureFixture) -> None:
    import boto3

    bucket = s3_server.bucket("integrity-tests")
    url = storage.join(bucket, "run", "checkpoint.pth.tar")
    storage.save_torch({"step": 1}, url)
    storage.save_torch({"step": 2}, url)
    prev = storage.join(bucket, "run", "checkpoint.prev.pth.tar")
    storage.copy_verified(url, prev)
    assert storage.load_torch(prev)["step"] == 2
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    data = client.get_object(Bucket="integrity-tests", Key="run/checkpoint.pth.tar")["Body"].read()
    client.put_object(Bucket="integrity-tests", Key="run/checkpoint.pth.tar", Body=_flip_middle(data))
    with pytest.raises(storage.IntegrityError, match=f"{url} is damaged"):
        storage.load_torch(url)
    assert storage.load_torch(prev)["step"] == 2  # the copy is its own object
    client.delete_object(Bucket="integrity-tests", Key="run/checkpoint.prev.pth.tar.sha256")
    with caplog.at_level(logging.WARNING, logger="trainer.storage"):
        assert storage.load_torch(prev)["step"] == 2
    assert any("unverified" in r.getMessage() and prev in r.getMessage() for r in caplog.records)
