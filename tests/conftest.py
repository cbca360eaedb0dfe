"""Shared fixtures: a real S3-compatible server on loopback and a tiny generated image dataset."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(endpoint: str, server: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {server.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout_s:.0f}s")


@dataclass
class S3Server:
    endpoint: str

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if new) and return its URL, `s3://name`."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint)
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto in server mode as its own process on 127.0.0.1; the AWS env points every client at it.

    The variables go into os.environ so that subprocesses the tests spawn (CLI runs, DataLoader workers)
    reach the same server; they are restored when the session ends.
    """
    endpoint = f"http://127.0.0.1:{_free_port()}"
    port = endpoint.rsplit(":", 1)[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {key: os.environ.get(key) for key in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    try:
        _wait_until_serving(endpoint, server)
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
        yield S3Server(endpoint=endpoint)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny builtin:shapes ImageFolder: 4 classes x (16 train + 8 val) images of 32 px, seed 0."""
    from trainer.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_classes=4, train_per_class=16, val_per_class=8, image_size=32, seed=0)
    return root
