"""The readers of ImageFolder trees and staged datasets (manifest.json + tar shards), any fsspec URL, and the
`ImageSource` contract they and WebDataset shard sets (trainer/data/wds.py) share. Open data through
trainer/data/sources.py (`open_source`), which probes what a URL holds and picks the reader.

All give the `ImageSource` contract of docs/architecture.md. Sources are picklable and hold no open file
or connection across fork: the filesystem handle is re-made in each process. Per-sample data lives in
numpy arrays (not lists of Python strings) so that forked DataLoader workers share it instead of copying
it page by page as reference counts change.

A bad file never stops a run: an undecodable one is skipped and counted per sample, and listing skips
(and reports) what cannot be read safely: FIFOs, sockets and devices, which block or misbehave when opened.
File names that are not valid UTF-8 (Linux allows any bytes) are kept as their bytes and read back as such.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import numpy as np
from PIL import Image

from trainer import env, storage
from trainer.data import shard_fetch, streaming
from trainer.data.decode import BadImage, open_image_bytes, to_rgb
from trainer.data.names import (
    MANIFEST,
    MAX_EXAMPLES_LOGGED,
    STAGED_FORMATS,
    is_ignored_name,
    is_image_name,
    printable_name,
)
from trainer.errors import UserError

log = logging.getLogger("trainer.data.sources")  # the name its log lines have always carried
T = TypeVar("T")



def loader_timeout(workers: int) -> float:
    """`DataLoader(timeout=...)` for `workers` loader processes: UNMIX_READ_TIMEOUT_S, or 0 without workers, where
    torch allows no timeout (a read in the main process is unbounded: use workers on network filesystems).

    A read that stalls (a hung NFS or FUSE mount, a store that accepts a request and never answers) would hang
    the run for good, and a worker blocked in a system call does not even end on SIGTERM. FIFOs, the local
    case, are skipped at listing (and refused unopened if one appears later); for the rest a DataLoader waits
    this long for a batch, then raises RuntimeError("DataLoader timed out after N seconds"), which the run's
    error boundary reports. 0: no limit."""
    return env.current().read_timeout_s if workers > 0 else 0.0


class ImageSource:
    """Labelled images addressed by index. Subclasses implement `_read(index) -> bytes`."""

    classes: list[str]
    targets: list[int]

    def __init__(self, url: str, classes: list[str], names: np.ndarray, targets: np.ndarray) -> None:
        self.url = url
        self.classes = classes
        self.targets = [int(t) for t in targets]
        self._names = names  # the names' bytes (utf-8 unless the file system says otherwise), relative to `url`
        self._bad: dict[int, str] = {}
        self._max_pixels = env.current().max_image_pixels  # read once: decoding runs per image
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
        """Relative path; bytes that are not UTF-8 come back as surrogate escapes, as os.listdir gives them."""
        return self._names[index].decode("utf-8", "surrogateescape")

    def shard_of(self, index: int) -> int:
        return 0

    def _read(self, index: int) -> bytes:
        raise NotImplementedError

    def where(self, index: int) -> str:
        """Where sample `index` is, for logs."""
        return printable_name(storage.join(self.url, self.name(index)))

    def _mark_bad(self, index: int, reason: str) -> None:
        if index not in self._bad:
            log.warning("skipping %s: %s", self.where(index), reason)
        self._bad[index] = reason

    def decode_with(self, index: int, transform: Callable[[Image.Image], T]) -> T | None:
        """`transform(image)` of sample `index`, opened with only its header parsed; None (logged once,
        counted in `skipped`) when reading it or any decode step of `transform` raises BadImage."""
        try:
            return transform(open_image_bytes(self._read(index), self._max_pixels))
        except BadImage as error:
            self._mark_bad(index, str(error))
            return None

    def load(self, index: int, draft_size: tuple[int, int] | None = None) -> Image.Image | None:
        """RGB, EXIF-transposed image, or None when the file cannot be decoded (logged once, counted)."""
        return self.decode_with(index, lambda image: to_rgb(image, draft_size))


def _read_regular_file(path: str) -> bytes:
    """A local file's bytes. O_NONBLOCK: a file turned into a FIFO after listing fails here instead of
    blocking the open until some writer appears."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BadImage("no longer a regular file (it changed after the folder was listed)")
        return handle.read()


class FolderSource(ImageSource):
    """An ImageFolder tree: `<root>/<class>/**/<image>`; one file per sample."""

    def __init__(self, url: str, classes: list[str], names: np.ndarray, targets: np.ndarray,
                 listing: Listing) -> None:
        super().__init__(url, classes, names, targets)
        self.ignored = listing.ignored
        self.not_regular = listing.not_regular
        self.non_utf8_names = [printable_name(name) for name in listing.non_utf8]
        self._root = storage.filesystem(url)[1].rstrip("/")
        self._local = storage.is_local(url)

    def _read(self, index: int) -> bytes:
        path = f"{self._root}/{self.name(index)}"
        fs = self._fs()
        read = (lambda: _read_regular_file(path)) if self._local else (lambda: fs.cat_file(path))
        try:
            data = storage.with_retries(read, f"reading {printable_name(self.name(index))}")
            if not self._local:
                streaming.count_request(len(data))
            return data
        except FileNotFoundError as error:
            raise BadImage("file disappeared after the folder was listed") from error
        except PermissionError as error:
            raise BadImage(f"no permission to read it ({error.strerror})") from error


class ShardedSource(ImageSource):
    """Samples that are members of tar shards, each read by its (shard, offset, size).

    The read path (trainer/data/streaming.py, chosen once and logged by `open_source`): on remote storage
    whole shards go into a local shard cache (a temp folder with a size cap unless `cache_dir` or
    UNMIX_SHARD_CACHE says where), fetched once per host and ahead of the reader (the sampler asks for the next
    shards; reading in shard order fetches the next one by itself), then read from local disk; local shards
    are read in place; with UNMIX_SHARD_CACHE=off each sample is one ranged read, and in shard order
    (evaluation, staging checks) one request fetches many samples (read-ahead).
    """

    def __init__(self, url: str, classes: list[str], names: np.ndarray, targets: np.ndarray, *,
                 shard_urls: list[str], shard_ends: list[int], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, cache_dir: str | None, cache_names: list[str],
                 checksums: list[str] | None = None, shard_sizes: list[int] | None = None,
                 versions: list[str] | None = None) -> None:
        super().__init__(url, classes, names, targets)
        self.shard_urls = shard_urls
        self._shard_ends = shard_ends  # read-ahead never reads past these (the shard's size, or its last sample)
        self._shard, self._offset, self._size = shard, offset, size
        self.read_path = streaming.choose_read_path(url, cache_dir)
        self.cache_dir = self.read_path.folder
        self._cache = (streaming.ShardCache(self.read_path.folder, self.read_path.cap_bytes)
                       if self.read_path.kind == "cache" else None)
        self._open = streaming.OpenShards(touch=self._cache is not None)
        self._cache_names = cache_names  # per shard: its file name in the cache (unique per content)
        self._checksums = checksums  # per shard sha256 (staged), verified when it enters the cache
        self._shard_sizes = shard_sizes  # per shard size (staged)
        self._versions = versions  # per shard URL, size and ETag as indexed (WebDataset)
        self._rechecked: set[int] = set()  # shards whose cache entry this process re-checked after a bad sample
        self._block: tuple[int, int, bytes] | None = None  # (shard, start, data) of the last read-ahead
        self._last_index = -2  # samples are numbered in shard order: the next number is the next member
        self._in_order = 0  # consecutive reads in shard order so far (then the next shard is fetched ahead)
        self._fetched_after = -1  # the shard whose successor this process last fetched ahead
        self._my_shards = np.unique(shard)  # this split's shards, in shard order
        streaming.register(self)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_block"] = None
        state["_open"] = streaming.OpenShards(touch=self._cache is not None)
        return state

    @property
    def shard_numbers(self) -> np.ndarray:
        """The shard of every sample (what a ResumableSampler is built from)."""
        return self._shard

    def shard_of(self, index: int) -> int:
        return int(self._shard[index])

    def where(self, index: int) -> str:
        return f"{printable_name(self.name(index))} (in {self.shard_urls[self.shard_of(index)]})"

    def fetch_shard(self, shard: int, wait: bool = True) -> str | None:
        """Local path of the whole shard in the cache, fetched (and checksum-verified) once per host; None when
        `wait` is False and another process is fetching it."""
        assert self._cache is not None
        return self._cache.fetch(*self._expected(shard), wait=wait, version=self._versions[shard]
                                 if self._versions is not None else None)

    def _expected(self, shard: int) -> tuple[str, str, int | None, str | None]:
        """(URL, cache name, size, sha256) of `shard`, for the cache's checks."""
        return (self.shard_urls[shard], self._cache_names[shard],
                self._shard_sizes[shard] if self._shard_sizes is not None else None,
                self._checksums[shard] if self._checksums is not None else None)

    def decode_with(self, index: int, transform: Callable[[Image.Image], T]) -> T | None:
        """As ImageSource's; but a sample that does not decode from a cached shard first has the shard's cache
        entry checked (once per shard and process): a damaged entry is fetched again and the sample read anew,
        so no sample is skipped because of the local cache."""
        try:
            return transform(open_image_bytes(self._read(index), self._max_pixels))
        except BadImage as error:
            shard = self.shard_of(index)
            if self._cache is None or shard in self._rechecked:
                self._mark_bad(index, str(error))
                return None
            self._rechecked.add(shard)
            if not self._cache.recheck(*self._expected(shard), self._versions[shard]
                                       if self._versions is not None else None):
                self._mark_bad(index, str(error))
                return None
            self._open.forget(self._cache.path(self._cache_names[shard]))  # the discarded file, still open
        return super().decode_with(index, transform)

    def prefetch(self, shards: list[int]) -> None:
        """Fetch `shards` into the cache in the background, in order (no-op without the cache)."""
        if self._cache is not None and shards:
            streaming.PREFETCHER.ahead(self, [int(shard) for shard in shards])

    def _read_cached(self, shard: int, start: int, end: int) -> bytes:
        for _ in range(3):  # evicted between the fetch and the open (a cache smaller than the reads in flight)
            local = self.fetch_shard(shard)
            assert local is not None
            try:
                return self._open.read(local, start, end)
            except FileNotFoundError:
                self._open.forget(local)
        raise OSError(f"shard cache {self.cache_dir} evicts shards before they are read; raise UNMIX_SHARD_CACHE_GB")

    def _read_range(self, shard: int, start: int, end: int) -> bytes:
        if self._cache is not None:
            return self._read_cached(shard, start, end)
        url = self.shard_urls[shard]
        fs, path = self._fs(), storage.filesystem(url)[1]
        try:
            if self.read_path.kind == "direct":
                return self._open.read(path, start, end)
            data = storage.with_retries(lambda: fs.cat_file(path, start=start, end=end), f"reading {url}")
        except FileNotFoundError as error:
            raise shard_fetch.missing(url) from error
        if self.read_path.kind == "ranged":
            streaming.count_request(len(data))
        return data

    def _fetch_next_in_shard_order(self, shard: int) -> None:
        """Reading in shard order (8 consecutive samples in a row): fetch the shard after `shard` ahead."""
        if self._cache is None or self._in_order < 8 or self._fetched_after == shard:
            return
        self._fetched_after = shard
        following = int(np.searchsorted(self._my_shards, shard, side="right"))
        if following < len(self._my_shards):
            self.prefetch([int(self._my_shards[following])])

    def _read(self, index: int) -> bytes:
        shard, offset = int(self._shard[index]), int(self._offset[index])
        end = offset + int(self._size[index])
        block = self._block
        sequential = index == self._last_index + 1 and self.shard_of(self._last_index) == shard
        self._in_order = self._in_order + 1 if index == self._last_index + 1 else 0
        if block is not None and block[0] == shard and block[1] <= offset and end <= block[1] + len(block[2]):
            data = block[2][offset - block[1]:end - block[1]]
        elif self._cache is None and sequential:
            # Reading in shard order (evaluation, staging checks): fetch ahead, one request for many samples.
            block_end = max(end, min(offset + env.current().shard_readahead_mb * 2**20,
                                             self._shard_ends[shard]))
            self._block = (shard, offset, self._read_range(shard, offset, block_end))
            data = self._block[2][:end - offset]
        else:
            data = self._read_range(shard, offset, end)
        self._fetch_next_in_shard_order(shard)
        self._last_index = index
        return data


class StagedSource(ShardedSource):
    """A staged split: samples are members of tar shards, read by the (offset, size) in the index."""

    def __init__(self, url: str, manifest: dict[str, Any], split: str, index: dict[str, np.ndarray],
                 cache_dir: str | None) -> None:
        shards: list[dict[str, Any]] = manifest["splits"][split]["shards"]
        root = data_root(url, manifest)
        super().__init__(url, manifest["classes"], index["names"], index["labels"],
                         shard_urls=[storage.child_url(root, shard["path"], f"{storage.join(url, MANIFEST)}: "
                                                       f"{split} shard {number}")
                                     for number, shard in enumerate(shards)],
                         shard_ends=[int(shard["size"]) for shard in shards], shard=index["shard"],
                         offset=index["offset"], size=index["size"], cache_dir=cache_dir,
                         cache_names=[shard["sha256"] for shard in shards],
                         checksums=[shard["sha256"] for shard in shards],
                         shard_sizes=[int(shard["size"]) for shard in shards])
        self.shards = shards
        self.format = manifest["format"]


@dataclass
class Listing:
    """What `list_folder` found under a folder; every name is relative to it."""

    images: list[str]  # samples, sorted: files with an image extension inside a class folder
    sizes: list[int]  # of each image, in bytes
    ignored: list[str]  # everything else (printable names): hidden, non-image, stray, and `not_regular`
    not_regular: dict[str, str]  # printable name -> what it is: FIFOs, sockets, devices, broken links
    non_utf8: list[str]  # images whose name is not valid UTF-8 (surrogate-escaped, readable as they are)


def _is_sample_name(relative: str) -> bool:
    return "/" in relative and not is_ignored_name(relative) and is_image_name(relative)


def _not_regular_kind(path: str) -> str | None:
    """None for a regular file (or a link to one); else what it is. Never opens it: a FIFO blocks on open."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a regular file is a file
    except OSError as error:
        return "broken symbolic link" if os.path.islink(path) else f"cannot stat it ({error.strerror})"
    kinds = [(stat.S_ISREG, None), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISDIR, "link to a folder (not followed)")]
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _entry_kind(path: str, info: dict[str, Any], local: bool) -> str | None:
    """None for a regular file; else what it is. fsspec calls links and special local files "other"."""
    if info.get("type") == "file":
        return None
    return _not_regular_kind(path) if local else f"not a regular file (type {info.get('type')!r})"


def _report_not_regular(url: str, not_regular: dict[str, str]) -> None:
    if not_regular:
        examples = ", ".join(f"{name} ({kind})" for name, kind in list(not_regular.items())[:MAX_EXAMPLES_LOGGED])
        log.warning("%s: skipped %d entries that are not regular files, without opening them: %s",
                    printable_name(url), len(not_regular), examples)


def list_folder(url: str) -> Listing:
    """Every entry under `url`, sorted, split into images and the rest (see `Listing`).

    Images are the regular files with an image extension inside a class folder; hidden files, files in
    hidden folders, stray files at the top and non-image files are ignored, and so are entries that are
    not regular files (checked without opening them, and logged).
    """
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    local = storage.is_local(url)
    found = storage.with_retries(lambda: fs.find(root, detail=True), f"listing {printable_name(url)}")
    listing = Listing([], [], [], {}, [])
    for path in sorted(found):
        relative = path[len(root):].lstrip("/")
        shown = printable_name(relative)
        if not _is_sample_name(relative):
            listing.ignored.append(shown)
        elif (kind := _entry_kind(path, found[path], local)) is not None:
            listing.ignored.append(shown)
            listing.not_regular[shown] = kind
        else:
            listing.images.append(relative)
            listing.sizes.append(int(found[path].get("size") or 0))
            if shown != relative:
                listing.non_utf8.append(relative)
    _report_not_regular(url, listing.not_regular)
    return listing


def open_folder(url: str) -> FolderSource:
    """An ImageFolder tree; classes are its (non-hidden) subfolders holding at least one file, sorted."""
    listing = list_folder(url)
    images, ignored = listing.images, listing.ignored
    classes = sorted({path.split("/", 1)[0] for path in images})
    if not classes:
        raise UserError(f"no images in class folders under {printable_name(url)}; expected <class>/<image>.jpg "
                        "files (an ImageFolder tree), a folder holding train/ and val/, or a staged dataset")
    label_of = {name: label for label, name in enumerate(classes)}
    shown_url = printable_name(url)
    empty = sorted({p.split("/", 1)[0] for p in ignored if "/" in p and not is_ignored_name(p)}
                   - {printable_name(c) for c in classes})
    if empty:
        log.warning("%s: folders without images are not classes: %s", shown_url, ", ".join(empty[:10]))
    if ignored:
        log.info("%s: ignored %d hidden, non-image or special files (e.g. %s)", shown_url, len(ignored),
                 ignored[0])
    if listing.non_utf8:
        log.warning("%s: %d file names are not valid UTF-8 (e.g. %s); read as they are, logged with \\x "
                    "escapes", shown_url, len(listing.non_utf8), printable_name(listing.non_utf8[0]))
    names = np.array([p.encode("utf-8", "surrogateescape") for p in images], dtype=np.bytes_)
    targets = np.array([label_of[p.split("/", 1)[0]] for p in images], dtype=np.int64)
    return FolderSource(url, classes, names, targets, listing)


def read_manifest(url: str) -> dict[str, Any]:
    manifest_url = storage.join(url, MANIFEST)
    try:
        manifest = json.loads(storage.read_verified(manifest_url).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{manifest_url} is not valid JSON ({error}); re-run unmix-swav stage") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("classes"), list) or not isinstance(
            manifest.get("splits"), dict):
        found = f"a JSON {type(manifest).__name__}" if not isinstance(manifest, dict) else "an object without them"
        raise UserError(f"{manifest_url} is {found}, not a staged manifest with classes and splits; re-run "
                        "unmix-swav stage into a new --dest")
    if manifest.get("format") not in STAGED_FORMATS:
        raise UserError(f"{manifest_url} has format {manifest.get('format')!r}, which this version does not read "
                        f"(it reads {', '.join(STAGED_FORMATS)}); re-run unmix-swav stage from the original source "
                        "into a new --dest")
    if not manifest.get("complete"):
        raise UserError(f"{manifest_url} is not a complete {manifest['format']} manifest; "
                        "re-run unmix-swav stage to finish it")
    return manifest


def data_root(url: str, manifest: dict[str, Any]) -> str:
    """Where the shards and indexes of the staged dataset at `url` are: `url`, or the staged dataset that a
    `stage --source <staged dataset>` run reused (its manifest says `data_root`)."""
    return str(manifest.get("data_root") or url)


def read_index(url: str, split_info: dict[str, Any], manifest: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    index_url = storage.child_url(data_root(url, manifest or {}), split_info["index"],
                                  f"{storage.join(url, MANIFEST)}: index")
    data = storage.read_bytes(index_url)
    found = hashlib.sha256(data).hexdigest()
    if found != split_info["index_sha256"]:
        raise storage.IntegrityError(f"{index_url} is damaged: its sha256 is {found[:12]}.. but the manifest "
                                     f"recorded {str(split_info['index_sha256'])[:12]}..; re-run unmix-swav stage")
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
    source = StagedSource(url, manifest, split, read_index(url, split_info, manifest), cache_dir)
    shard_fetch.check_listed(source.shard_urls, [int(shard["size"]) for shard in source.shards])
    return source
