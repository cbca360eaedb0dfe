"""Shared fixtures: a real S3-compatible server on loopback and a tiny generated image dataset."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import process_guard
import pytest
from planted import PLANTED_IGNORED, encoded, png_claiming_size
from servers import free_port, wait_until_serving

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session", autouse=True)
def temp_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every temp file of the tests and the processes they start (torchrun's logs, the default shard cache,
    metrics staging, crash reports, kfp workspaces) goes under pytest's base folder, removed when the run
    passes: nothing piles up in the machine's /tmp from one run to the next."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp", numbered=False)))
        patch.setattr(tempfile, "tempdir", None)  # recomputed from TMPDIR on next use
        yield


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
    endpoint = f"http://127.0.0.1:{free_port()}"
    port = endpoint.rsplit(":", 1)[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(endpoint, server)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
                patch.setenv(key, value)
            yield S3Server(endpoint=endpoint)
    finally:
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
        "cats/rgb.jpg": encoded(rgb, "JPEG"),
        "cats/gray.jpg": encoded(rgb.convert("L"), "JPEG"),
        "cats/cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "cats/rotated.jpg": encoded(rgb, "JPEG", exif=exif.tobytes()),
        "dogs/palette.png": encoded(palette, "PNG"),
        "dogs/alpha.png": encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"),
        "dogs/sixteen.png": encoded(wide16, "PNG"),
        "dogs/chien_\u00e9t\u00e9_\u72ac.jpg": encoded(rgb, "JPEG"),
    }
    bad = {
        "cats/truncated.jpg": encoded(rgb, "JPEG")[:300],
        "cats/empty.jpg": b"",
        "dogs/notes.jpg": b"this is not an image\n",
        "dogs/huge.png": png_claiming_size(30000, 30000),
    }
    ignored = {name: b"x" for name in PLANTED_IGNORED}
    root = tmp_path / "planted"
    for name, data in {**good, **bad, **ignored}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    process_guard.mark_servers_slow(items)


pytest_runtest_protocol = process_guard.runtest_protocol


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    unmarked = process_guard.unmarked_process_starters()
    if unmarked:
        print(f"\nerror: {len(unmarked)} test(s) start a process but are not marked slow "
              "(add @pytest.mark.slow):\n  " + "\n  ".join(unmarked))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
