"""Image sources: a plain ImageFolder tree or a staged dataset (manifest.json + tar shards), any fsspec URL.

Both give the `ImageSource` contract of docs/architecture.md. Sources are picklable and hold no open file
or connection across fork: the filesystem handle is re-made in each process. Per-sample data lives in
numpy arrays (not lists of Python strings) so that forked DataLoader workers share it instead of copying
it page by page as reference counts change.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import posixpath
import uuid
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from trainer import storage
from trainer.data.decode import BadImage, decode, is_image_name, open_image_bytes
from trainer.data.decode import to_rgb as decode_to_rgb
from trainer.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGED_FORMAT = "unmix-swav-staged/1"
SPLITS = ("train", "val")
SEQUENTIAL_READAHEAD_BYTES = int(os.environ.get("UNMIX_SHARD_READAHEAD_MB", "8")) * 2**20
TAR_GAP_BYTES = 4096  # tar header(s) + padding between consecutive members: still a sequential read


def is_ignored_name(relative_path: str) -> bool:
    """Hidden files and folders (.DS_Store, ._x.jpg, .ipynb_checkpoints) and macOS archive debris."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative_path.split("/"))


class ImageSource:
    """Labelled images addressed by index. Subclasses implement `_read(index) -> bytes`."""

    classes: list[str]
    targets: list[int]

    def __init__(self, url: str, classes: list[str], names: np.ndarray, targets: np.ndarray) -> None:
        self.url = url
        self.classes = classes
        self.targets = [int(t) for t in targets]
        self._names = names  # utf-8 bytes, relative to `url`
        self._bad: dict[int, str] = {}
        self._fs_pid: tuple[fsspec.AbstractFileSystem, int] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fs_pid"] = None  # never ship a live filesystem (and its connections) to another process
        return state

    def _fs(self) -> fsspec.AbstractFileSystem:
        if self._fs_pid is None or self._fs_pid[1] != os.getpid():
            self._fs_pid = (storage.filesystem(self.url)[0], os.getpid())
        return self._fs_pid[0]

    @property
    def skipped(self) -> int:
        """How many samples failed to decode in this process so far."""
        return len(self._bad)

    def bad_files(self) -> dict[str, str]:
        """Path -> reason of every sample that failed to decode in this process."""
        return {self.name(i): reason for i, reason in self._bad.items()}

    def name(self, index: int) -> str:
        return self._names[index].decode("utf-8")

    def shard_of(self, index: int) -> int:
        return 0

    def _read(self, index: int) -> bytes:
        raise NotImplementedError

    def _mark_bad(self, index: int, reason: str) -> None:
        if index not in self._bad:
            log.warning("skipping %s: %s", storage.join(self.url, self.name(index)), reason)
        self._bad[index] = reason

    def open_image(self, index: int) -> Image.Image | None:
        """The image with only its header parsed (call `.draft()` then `to_rgb`), or None if unreadable."""
        try:
            return open_image_bytes(self._read(index))
        except BadImage as error:
            self._mark_bad(index, str(error))
            return None

    def to_rgb(self, image: Image.Image, index: int | None = None) -> Image.Image | None:
        """Decode pixels, EXIF-transpose and convert to RGB; None (logged, counted) if the data is corrupt.

        Without `index` a corrupt image raises trainer.data.decode.BadImage instead.
        """
        if index is None:
            return decode_to_rgb(image)
        try:
            return decode_to_rgb(image)
        except BadImage as error:
            self._mark_bad(index, str(error))
            return None

    def load(self, index: int, draft_size: tuple[int, int] | None = None) -> Image.Image | None:
        """RGB, EXIF-transposed image, or None when the file cannot be decoded (logged once, counted)."""
        try:
            return decode(self._read(index), draft_size)
        except BadImage as error:
            self._mark_bad(index, str(error))
            return None


class FolderSource(ImageSource):
    """An ImageFolder tree: `<root>/<class>/**/<image>`; one file per sample."""

    def __init__(self, url: str, classes: list[str], names: np.ndarray, targets: np.ndarray,
                 ignored: list[str]) -> None:
        super().__init__(url, classes, names, targets)
        self.ignored = ignored  # hidden and non-image files, relative to url
        self._root = storage.filesystem(url)[1].rstrip("/")

    def _read(self, index: int) -> bytes:
        path = f"{self._root}/{self.name(index)}"
        fs = self._fs()
        try:
            return storage.with_retries(lambda: fs.cat_file(path), f"reading {self.name(index)}")
        except FileNotFoundError as error:
            raise BadImage("file disappeared after the folder was listed") from error


class StagedSource(ImageSource):
    """A staged split: samples are members of tar shards, read by the (offset, size) in the index."""

    def __init__(self, url: str, manifest: dict[str, Any], split: str, index: dict[str, np.ndarray],
                 cache_dir: str | None) -> None:
        super().__init__(url, manifest["classes"], index["names"], index["labels"])
        self.shards: list[dict[str, Any]] = manifest["splits"][split]["shards"]
        self._shard = index["shard"]
        self._offset = index["offset"]
        self._size = index["size"]
        self.cache_dir = cache_dir
        self._block: tuple[int, int, bytes] | None = None  # (shard, start, data) of the last read-ahead
        self._last_end: tuple[int, int] = (-1, -1)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_block"] = None
        return state

    def shard_of(self, index: int) -> int:
        return int(self._shard[index])

    def _shard_url(self, shard: int) -> str:
        return storage.join(self.url, self.shards[shard]["path"])

    def _cached_shard(self, shard: int) -> str:
        """Local path of the whole shard in the cache dir, downloaded and checksum-verified once per host."""
        assert self.cache_dir is not None
        info = self.shards[shard]
        os.makedirs(self.cache_dir, exist_ok=True)
        local = os.path.join(self.cache_dir, f"{info['sha256']}.tar")
        if os.path.exists(local):
            return local
        # One download per host: concurrent loader workers wait for the first one instead of repeating it.
        with open(f"{local}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(local):
                data = storage.read_bytes(self._shard_url(shard))
                if hashlib.sha256(data).hexdigest() != info["sha256"]:
                    raise OSError(f"shard {self._shard_url(shard)} does not match its manifest checksum")
                tmp = f"{local}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, local)
        return local

    def _read_range(self, shard: int, start: int, end: int) -> bytes:
        if self.cache_dir is not None:
            with open(self._cached_shard(shard), "rb") as handle:
                handle.seek(start)
                return handle.read(end - start)
        url = self._shard_url(shard)
        fs, path = self._fs(), storage.filesystem(url)[1]
        return storage.with_retries(lambda: fs.cat_file(path, start=start, end=end), f"reading {url}")

    def _read(self, index: int) -> bytes:
        shard, offset = int(self._shard[index]), int(self._offset[index])
        end = offset + int(self._size[index])
        block = self._block
        if block is not None and block[0] == shard and block[1] <= offset and end <= block[1] + len(block[2]):
            data = block[2][offset - block[1]:end - block[1]]
        elif self.cache_dir is None and self._last_end[0] == shard and \
                0 <= offset - self._last_end[1] <= TAR_GAP_BYTES:
            # Reading in shard order (evaluation, staging checks): fetch ahead, one request for many samples.
            shard_size = int(self.shards[shard]["size"])
            block_end = max(end, min(offset + SEQUENTIAL_READAHEAD_BYTES, shard_size))
            self._block = (shard, offset, self._read_range(shard, offset, block_end))
            data = self._block[2][:end - offset]
        else:
            data = self._read_range(shard, offset, end)
        self._last_end = (shard, end)
        return data


def list_folder(url: str) -> tuple[list[str], list[int], list[str]]:
    """Every file under `url`, relative to it: (image paths, their sizes in bytes, ignored paths), sorted.

    Images are the files with an image extension inside a class folder; hidden files, files in hidden
    folders, stray files at the top and non-image files are ignored.
    """
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    found = storage.with_retries(lambda: fs.find(root, detail=True), f"listing {url}")
    images, sizes, ignored = [], [], []
    for path in sorted(found):
        relative = path[len(root):].lstrip("/")
        if "/" in relative and not is_ignored_name(relative) and is_image_name(relative):
            images.append(relative)
            sizes.append(int(found[path].get("size") or 0))
        else:
            ignored.append(relative)
    return images, sizes, ignored


def open_folder(url: str) -> FolderSource:
    """An ImageFolder tree; classes are its (non-hidden) subfolders holding at least one file, sorted."""
    images, _, ignored = list_folder(url)
    classes = sorted({path.split("/", 1)[0] for path in images})
    if not classes:
        raise UserError(f"no images in class folders under {url}; expected <class>/<image>.jpg files "
                        "(an ImageFolder tree), a folder holding train/ and val/, or a staged dataset")
    label_of = {name: label for label, name in enumerate(classes)}
    empty = sorted({p.split("/", 1)[0] for p in ignored if "/" in p and not is_ignored_name(p)} - set(classes))
    if empty:
        log.warning("%s: folders without images are not classes: %s", url, ", ".join(empty[:10]))
    if ignored:
        log.info("%s: ignored %d hidden or non-image files (e.g. %s)", url, len(ignored), ignored[0])
    names = np.array([p.encode("utf-8") for p in images], dtype=np.bytes_)
    targets = np.array([label_of[p.split("/", 1)[0]] for p in images], dtype=np.int64)
    return FolderSource(url, classes, names, targets, ignored)


def read_manifest(url: str) -> dict[str, Any]:
    manifest_url = storage.join(url, MANIFEST)
    try:
        manifest = json.loads(storage.read_text(manifest_url))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{manifest_url} is not valid JSON ({error}); re-run unmix-swav stage") from error
    if manifest.get("format") != STAGED_FORMAT or not manifest.get("complete"):
        raise UserError(f"{manifest_url} is not a complete {STAGED_FORMAT} manifest; "
                        "re-run unmix-swav stage to finish it")
    return manifest


def read_index(url: str, split_info: dict[str, Any]) -> dict[str, np.ndarray]:
    data = storage.read_bytes(storage.join(url, split_info["index"]))
    if hashlib.sha256(data).hexdigest() != split_info["index_sha256"]:
        raise UserError(f"{storage.join(url, split_info['index'])} does not match the manifest's checksum; "
                        "re-run unmix-swav stage")
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def open_staged(url: str, split: str | None = None, cache_dir: str | None = None) -> StagedSource:
    manifest = read_manifest(url)
    split = split or "train"
    if split not in manifest["splits"]:
        raise UserError(f"staged dataset {url} has no {split!r} split; it has: {', '.join(manifest['splits'])}")
    split_info = manifest["splits"][split]
    if split_info["count"] == 0:
        raise UserError(f"split {split!r} of staged dataset {url} is empty")
    cache_dir = cache_dir or os.environ.get("UNMIX_SHARD_CACHE") or None
    return StagedSource(url, manifest, split, read_index(url, split_info), cache_dir)


def resolve_folder(url: str, split: str | None) -> str:
    """The ImageFolder root for `split`: `<url>/<split>` when url holds train/ (or val/), else url itself."""
    fs, root = storage.filesystem(url)
    if not storage.with_retries(lambda: fs.isdir(root), f"checking {url}"):
        raise UserError(f"data path {url} does not exist or is not a folder; pass an ImageFolder tree, a "
                        "folder holding train/ and val/, or a staged dataset (folder with manifest.json)")
    subfolders = {posixpath.basename(p.rstrip("/"))
                  for p in storage.with_retries(lambda: fs.ls(root, detail=False), f"listing {url}")}
    if subfolders & set(SPLITS):
        chosen = split or "train"
        if chosen not in subfolders:
            raise UserError(f"{url} has no {chosen}/ folder (it has {', '.join(sorted(subfolders & set(SPLITS)))})")
        return storage.join(url, chosen)
    if split not in (None, "train"):
        raise UserError(f"{url} is a single ImageFolder tree without a {split}/ folder; pass the folder "
                        f"that holds {split}/, or a separate URL for the {split} data")
    return url


def open_source(url: str, split: str | None = None, cache_dir: str | None = None) -> ImageSource:
    """A staged dataset (folder with manifest.json) or an ImageFolder tree, local or on any fsspec store.

    `split` picks train/ or val/ (default train) when the folder holds both; `cache_dir` (or the
    UNMIX_SHARD_CACHE env) keeps whole staged shards on local disk after their first read.
    """
    url = url.rstrip("/")
    if url.endswith("/" + MANIFEST):
        url = url[: -len(MANIFEST) - 1]
    if storage.exists(storage.join(url, MANIFEST)):
        return open_staged(url, split, cache_dir)
    return open_folder(resolve_folder(url, split))
