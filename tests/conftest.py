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


def _encoded(image, fmt: str, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb as far as the header says."""
    import struct
    import zlib

    from PIL import Image

    data = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # after the PNG signature: length(4) type(4) payload(13) crc(4)
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])))
    return bytes(data)


# Files planted in `planted_folder`: the undecodable ones, and the odd-but-valid ones with the checks a
# decoder must pass on them.
PLANTED_BAD = {"cats/truncated.jpg", "cats/empty.jpg", "dogs/notes.jpg", "dogs/huge.png"}
PLANTED_IGNORED = {".DS_Store", "cats/.hidden.jpg", "cats/README.txt", "dogs/._resource.jpg", "top.jpg"}


@pytest.fixture
def planted_folder(tmp_path: Path) -> Path:
    """An ImageFolder (classes cats, dogs) holding every kind of file real folders contain.

    Valid: RGB, grayscale, CMYK and EXIF-rotated JPEG; palette+transparency, RGBA and 16-bit PNG; a
    non-ASCII name. Undecodable: PLANTED_BAD. Not images at all: PLANTED_IGNORED.
    """
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 40, dtype=np.float32)
    rgb = Image.fromarray(np.stack([np.tile(ramp, (24, 1)), np.tile(ramp[::-1], (24, 1)),
                                    np.full((24, 40), 90.0)], axis=-1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 1
    wide16 = Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 256).astype(np.uint16))
    good = {
        "cats/rgb.jpg": _encoded(rgb, "JPEG"),
        "cats/gray.jpg": _encoded(rgb.convert("L"), "JPEG"),
        "cats/cmyk.jpg": _encoded(rgb.convert("CMYK"), "JPEG"),
        "cats/rotated.jpg": _encoded(rgb, "JPEG", exif=exif.tobytes()),
        "dogs/palette.png": _encoded(palette, "PNG"),
        "dogs/alpha.png": _encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"),
        "dogs/sixteen.png": _encoded(wide16, "PNG"),
        "dogs/chien_\u00e9t\u00e9_\u72ac.jpg": _encoded(rgb, "JPEG"),
    }
    bad = {
        "cats/truncated.jpg": _encoded(rgb, "JPEG")[:300],
        "cats/empty.jpg": b"",
        "dogs/notes.jpg": b"this is not an image\n",
        "dogs/huge.png": _png_claiming_size(30000, 30000),
    }
    ignored = {name: b"x" for name in PLANTED_IGNORED}
    root = tmp_path / "planted"
    for name, data in {**good, **bad, **ignored}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root
