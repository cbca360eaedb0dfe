"""trainer.storage: atomic writes, safe loading with one-line errors, retries, and S3 over real HTTP (moto)."""

from __future__ import annotations

import io
import os
import socket

import pytest
import torch

from trainer import storage
from trainer.errors import UserError


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setenv("UNMIX_STORAGE_RETRIES", "3")
    monkeypatch.setenv("UNMIX_STORAGE_RETRY_DELAY", "0.01")


def test_local_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "checkpoint.pth.tar"
    storage.atomic_write_bytes(str(target), b"first")
    storage.atomic_write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["checkpoint.pth.tar"]


def test_failed_local_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "checkpoint.pth.tar"
    storage.atomic_write_bytes(str(target), b"good")
    with pytest.raises(TypeError):
        storage.atomic_write_bytes(str(target), "not bytes")  # type: ignore[arg-type]  # fails mid-write
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]


def test_save_and_load_torch_round_trip_through_file_url(tmp_path):
    url = f"file://{tmp_path}/state.pth"
    storage.save_torch({"w": torch.arange(4.0), "step": 3}, url)
    loaded = storage.load_torch(url)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.arange(4.0))


def _saved_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _checkpoint_bytes() -> bytes:
    return _saved_bytes({"model": {"w": torch.randn(64, 64)}, "step": 7})


class NotAWeight:
    """Objects of arbitrary classes (code on load) are what weights_only=True refuses."""


@pytest.mark.parametrize("content", [
    pytest.param(_checkpoint_bytes()[:2000], id="truncated"),
    pytest.param(b"", id="empty"),
    pytest.param(b"<html>403 Forbidden</html>", id="not-a-checkpoint"),
    pytest.param(_saved_bytes({"step": 1, "payload": NotAWeight()}), id="unsafe-object"),
])
def test_unloadable_checkpoint_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(content)
    with pytest.raises(UserError) as raised:
        storage.load_torch(str(path))
    message = str(raised.value)
    assert "\n" not in message
    assert f"checkpoint {path} could not be loaded" in message


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        storage.load_torch(str(tmp_path / "absent.pth"))


def test_transient_errors_are_retried_until_success(quick_retries):
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "done"

    assert storage.with_retries(flaky, "reading s3://b/k") == "done"
    assert len(calls) == 3


def test_permanent_errors_are_not_retried(quick_retries):
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("s3://b/k")

    with pytest.raises(FileNotFoundError):
        storage.with_retries(missing, "reading s3://b/k")
    assert len(calls) == 1


def test_exhausted_retries_raise_storage_unavailable_on_one_line(quick_retries):
    def broken() -> None:
        raise OSError(5, "We encountered an internal error. Please try again.\n(details)")

    with pytest.raises(storage.StorageUnavailable) as raised:
        storage.with_retries(broken, "writing s3://b/checkpoint.pth.tar")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("writing s3://b/checkpoint.pth.tar failed 3 times")


def test_s3_round_trip_over_http(s3_server):
    bucket = s3_server.bucket("storage-tests")
    url = storage.join(bucket, "run", "checkpoint.pth.tar")
    storage.save_torch({"step": 5, "w": torch.ones(3)}, url)
    storage.save_torch({"step": 6, "w": torch.ones(3)}, url)
    assert storage.exists(url) and not storage.exists(storage.join(bucket, "run", "other.pth"))
    assert storage.load_torch(url)["step"] == 6
    storage.write_text(storage.join(bucket, "run", "params.json"), "{}\n")
    assert storage.read_text(storage.join(bucket, "run", "params.json")) == "{}\n"


def test_truncated_checkpoint_on_s3_names_the_url(s3_server):
    url = storage.join(s3_server.bucket("storage-tests"), "torn", "checkpoint.pth.tar")
    storage.atomic_write_bytes(url, _checkpoint_bytes()[:1000])
    with pytest.raises(UserError, match=f"checkpoint {url} could not be loaded"):
        storage.load_torch(url)


def test_unreachable_endpoint_fails_after_retries(s3_server, monkeypatch, quick_retries):
    with socket.socket() as probe:  # a port nobody listens on: connection refused, like a store that is down
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: ours are under test
    with pytest.raises(storage.StorageUnavailable, match=r"checking s3://storage-tests/x failed 3 times .*"
                                                         r"EndpointConnectionError"):
        storage.exists("s3://storage-tests/x")


def test_missing_credentials_are_a_user_error(s3_server, monkeypatch, tmp_path):
    import s3fs

    bucket = s3_server.bucket("storage-tests")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()  # cached clients hold the credentials found earlier
    try:
        with pytest.raises(UserError, match="no S3 credentials were found"):
            storage.read_bytes(storage.join(bucket, "anything"))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
