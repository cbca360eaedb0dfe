"""A bad file never kills or hangs a run: corrupt images, special files and undecodable names.

Every test has a pytest-timeout marker: a FIFO that gets opened blocks forever, so a regression must fail
instead of hanging the suite.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainer import env
from trainer.cli import main
from trainer.data.decode import BadImage, decode, open_image_bytes, oriented_size, to_rgb
from trainer.data.multicrop import MultiCropDataset, crop_specs
from trainer.data.sources import FolderSource, loader_timeout, open_source
from trainer.data.staging import NON_UTF8_REASON

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and byte file names are POSIX")

NON_UTF8 = os.fsdecode(b"dogs/caf\xe9.jpg")  # Latin-1 bytes: what os.listdir gives for them
NON_UTF8_SHOWN = "dogs/caf\\xe9.jpg"
CORRUPT = {"cats/truncated.png", "cats/truncated_exif.jpg", "dogs/bad_chunk.png"}
SPECS = crop_specs([2], [16], [0.5], [1.0])
MAX_PIXELS = env.parse({}).max_image_pixels  # UNMIX_MAX_IMAGE_PIXELS's default


def _encoded(fmt: str, **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _corrupt_files() -> dict[str, bytes]:
    """Header intact, data bad: the PNG's EXIF read decodes the pixels, so it fails before `to_rgb`."""
    exif = Image.Exif()
    exif[0x0112] = 6
    png, jpeg = _encoded("PNG"), _encoded("JPEG", exif=exif.tobytes())
    bad_chunk = bytearray(png)
    bad_chunk[png.index(b"IDAT") + 14] ^= 0xFF  # a flipped byte of compressed pixels, CRC left stale
    return {"cats/truncated.png": png[: len(png) // 2], "cats/truncated_exif.jpg": jpeg[: len(jpeg) // 2],
            "dogs/bad_chunk.png": bytes(bad_chunk)}


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    """Good JPEGs in cats/ and dogs/, CORRUPT, a FIFO `cats/x.jpg`, a broken link, a link to a good file
    and a good image whose name is not UTF-8."""
    root = tmp_path / "bad"
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"good{i}.jpg").write_bytes(_encoded("JPEG"))
    for name, data in _corrupt_files().items():
        (root / name).write_bytes(data)
    (root / NON_UTF8).write_bytes(_encoded("JPEG"))
    os.mkfifo(root / "cats" / "x.jpg")
    (root / "cats" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    (root / "dogs" / "link.jpg").symlink_to(root / "cats" / "good0.jpg")
    return root


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_every_decode_step_reports_corrupt_data_as_bad_image(name: str) -> None:
    data = _corrupt_files()[name]
    with pytest.raises(BadImage, match="truncated|corrupt"):  # the multi-crop path: size first, then pixels
        image = open_image_bytes(data, MAX_PIXELS)
        oriented_size(image)
        to_rgb(image)
    with pytest.raises(BadImage, match="truncated|corrupt"):
        decode(data, MAX_PIXELS)


@pytest.mark.timeout(60)
def test_listing_skips_special_files_unopened_and_keeps_non_utf8_names(bad_folder: Path) -> None:
    source = open_source(str(bad_folder))
    assert isinstance(source, FolderSource)
    assert source.not_regular == {"cats/x.jpg": "FIFO", "cats/gone.jpg": "broken symbolic link"}
    assert set(source.not_regular) <= set(source.ignored)
    assert source.non_utf8_names == [NON_UTF8_SHOWN]
    names = [source.name(i) for i in range(len(source))]
    assert NON_UTF8 in names and "dogs/link.jpg" in names  # kept, and read back by the same bytes
    assert source.load(names.index(NON_UTF8)).size == (40, 48)
    assert source.load(names.index("dogs/link.jpg")) is not None


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_loader_over_a_bad_folder_finishes_and_counts_every_bad_file(bad_folder: Path) -> None:
    source = open_source(str(bad_folder))
    dataset = MultiCropDataset(source, SPECS, seed=0, rank=0)
    keys = [(0, index) for index in range(len(source))]
    loader = DataLoader(dataset, batch_size=4, sampler=keys, num_workers=1, timeout=loader_timeout(1),
                        multiprocessing_context="fork")
    batches = list(loader)
    assert sum(len(skipped) for _, skipped in batches) == len(source)
    assert sum(int(skipped.sum()) for _, skipped in batches) >= len(CORRUPT)  # each bad index moved on once

    for index in range(len(source)):  # in this process too, so that the source's own count can be read
        crops, _ = dataset[(0, index)]
        assert crops[0].shape == (3, 16, 16)
    assert set(source.bad_files()) == CORRUPT
    assert source.skipped == len(CORRUPT)
    seed_style = MultiCropDataset(source, SPECS, seed=0, rank=0, device_photometric=False)
    assert all(seed_style[(0, index)][0][0].dtype == torch.float32 for index in range(len(source)))


@pytest.mark.timeout(60)
def test_a_file_turned_fifo_after_listing_is_skipped_not_waited_for(bad_folder: Path) -> None:
    source = open_source(str(bad_folder))
    index = [source.name(i) for i in range(len(source))].index("cats/good1.jpg")
    os.remove(bad_folder / "cats" / "good1.jpg")
    os.mkfifo(bad_folder / "cats" / "good1.jpg")
    crops, skipped = MultiCropDataset(source, SPECS, seed=0, rank=0)[(0, index)]
    assert skipped == 1 and "no longer a regular file" in source.bad_files()["cats/good1.jpg"]


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_a_stalled_read_times_the_loader_out(bad_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that never returns (a hung mount): the loader raises instead of waiting for good."""
    read_end, write_end = os.pipe()
    read = FolderSource._read

    def stalled_read(self: FolderSource, index: int) -> bytes:
        os.read(read_end, 1)  # blocks the worker until the test writes to the pipe
        return read(self, index)

    monkeypatch.setattr(FolderSource, "_read", stalled_read)
    loader = DataLoader(MultiCropDataset(open_source(str(bad_folder)), SPECS, seed=0, rank=0), sampler=[(0, 0)],
                        num_workers=1, timeout=1, multiprocessing_context="fork")
    batches = iter(loader)
    with pytest.raises(RuntimeError, match="timed out after 1 seconds"):
        next(batches)
    os.write(write_end, b"x")  # let the worker finish, so that shutting it down is prompt
    del batches
    os.close(read_end)
    os.close(write_end)
    assert loader_timeout(0) == 0 and loader_timeout(2) == env.current().read_timeout_s > 0


@pytest.mark.timeout(60)
def test_staging_a_bad_folder_records_all_three(bad_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    assert main(["stage", "--source", str(bad_folder), "--dest", str(dest), "--workers", "1",
                 "--max_bad_fraction", "0.5"]) == 0
    manifest = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    reasons = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(reasons) == CORRUPT | {NON_UTF8_SHOWN}
    assert reasons[NON_UTF8_SHOWN] == NON_UTF8_REASON
    assert manifest["ignored"]["not_regular"] == {"train/cats/x.jpg": "FIFO",
                                                   "train/cats/gone.jpg": "broken symbolic link"}
    assert {"train/cats/x.jpg", "train/cats/gone.jpg"} <= set(manifest["ignored"]["paths"])
    assert manifest["splits"]["train"]["count"] == 7  # 6 good files and the link to one
    staged = open_source(str(dest))
    assert all(staged.load(index) is not None for index in range(len(staged)))
