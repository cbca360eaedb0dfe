"""Tar archives as a staging source: index members by streaming each archive once, read them by byte range.

Layouts (uncompressed tars, local or any fsspec URL):
  one tar          members `<class>/<image>`, or `train/<class>/...` + `val/<class>/...`; a member that is
                   itself a tar (`<class>.tar`, as in ImageNet's ILSVRC2012_img_train.tar) is one class
  folder of tars   `<class>.tar` per class (ImageNet's per-class tars, members are bare file names)
  WebDataset shard `<key>.<ext>` members grouped by key (trainer/data/layout.py tells the layouts apart by content);
                   small label members (`.cls`, `.json`) are read in passing and kept in the index
Indexing reads the archive front to back, once, parsing only tar headers (seeking over member data, so a
local archive is barely read and an object is fetched sequentially in the filesystem's read-ahead blocks);
nothing is extracted and no archive is held in memory. The index (member, data offset, size) is kept under
the destination so that a resumed run does not read the archives again. Shard writers then fetch the
members they need by byte range, one request per run of neighbouring members.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from trainer import storage
from trainer.data.names import SPLITS, is_ignored_name, is_image_name
from trainer.data.shard_fetch import archive_key
from trainer.errors import UserError

log = logging.getLogger(__name__)
TAR_SUFFIX = ".tar"
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.lz4")
INDEX_FOLDER = "archive-index"
INDEX_VERSION = 2  # 2: label members' text kept (records of version 1 are indexed again)
LABEL_SUFFIXES = ("cls", "cls2", "json")  # WebDataset members that carry a sample's label
MAX_LABEL_BYTES = 64 * 1024
RUN_GAP_BYTES = 64 * 1024  # members closer than this are fetched in one request (tar headers lie between)
FLAT_TAR_HINT = ("files without a class folder have no label, and a flat val tar needs a label file, which "
                 "stage does not read; sort the images into <class>/ folders first (for ImageNet's val tar: "
                 "valprep.sh) and pass that tree or a tar of it")


@dataclass(frozen=True)
class Member:
    path: str  # inside the archive; `<inner>.tar/<file>` for a file of a tar inside the archive
    offset: int  # of the member's data, from the start of the archive file
    size: int
    text: str | None = None  # the contents of a small WebDataset label member (`.cls`, `.json`), read in passing


@dataclass
class ArchiveListing:
    """One split's samples inside tar archives: names `<class>/<image>` and where each one's bytes are."""

    archives: list[str] = field(default_factory=list)  # archive URLs
    keys: list[str] = field(default_factory=list)  # per archive: URL, size and version (resume checks)
    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    locations: list[tuple[int, str, int]] = field(default_factory=list)  # (archive number, member, offset)
    ignored: list[str] = field(default_factory=list)  # `<archive name>/<member>` of non-image members
    # WebDataset shards say each sample's label and the classes; other archives leave both to the names.
    labels: list[int] | None = None
    classes: list[str] | None = None
    bad: list[list[str]] = field(default_factory=list)  # [member, reason, archive URL] left out when listed
    _position: dict[str, int] = field(default_factory=dict)

    def add(self, archive: int, member: Member, name: str, where: str) -> None:
        """Add a sample; a later member of the same name replaces it, as when the tar is extracted."""
        if name in self._position:
            replaced = self._position[name]
            old_archive, old_member, _ = self.locations[replaced]
            self.ignored.append(f"{posixpath.basename(self.archives[old_archive])}/{old_member} "
                                f"(replaced by {where})")
            self.sizes[replaced] = member.size
            self.locations[replaced] = (archive, member.path, member.offset)
            return
        self._position[name] = len(self.names)
        self.names.append(name)
        self.sizes.append(member.size)
        self.locations.append((archive, member.path, member.offset))


def is_tar_name(name: str) -> bool:
    return name.rstrip("/").lower().endswith(TAR_SUFFIX)


def refuse_compressed(url: str) -> None:
    """Members of a compressed stream cannot be read by byte range: say how to make a plain tar."""
    if url.rstrip("/").lower().endswith(COMPRESSED_TAR_SUFFIXES):
        raise UserError(f"{url} is a compressed tar; stage reads members by byte range, which a compressed "
                        "stream does not allow: decompress it to a plain .tar (e.g. `gunzip`) and stage that")


def _index_members(tar: tarfile.TarFile, base_offset: int, prefix: str) -> list[Member]:
    members = []
    while (info := tar.next()) is not None:
        tar.members.clear()  # TarFile keeps every header it has read: millions for one big archive
        if not info.isreg() or info.issparse():
            continue
        path = prefix + info.name.removeprefix("./")
        if is_tar_name(path) and not prefix:
            inner_file = tar.extractfile(info)
            assert inner_file is not None
            with tarfile.open(fileobj=inner_file, mode="r:") as inner:
                members += _index_members(inner, base_offset + info.offset_data, path + "/")
        else:
            text = None
            if not prefix and info.size <= MAX_LABEL_BYTES and _is_label_member(path):
                handle = tar.extractfile(info)  # the next bytes of the stream: read while passing by
                assert handle is not None
                text = handle.read().decode("utf-8", "replace")
            members.append(Member(path, base_offset + info.offset_data, info.size, text))
    return members


def _is_label_member(path: str) -> bool:
    basename = path.rsplit("/", 1)[-1]
    return "." in basename and basename.split(".", 1)[1].lower() in LABEL_SUFFIXES


def index_tar(url: str) -> list[Member]:
    """Every regular file in the tar at `url` (one level of inner tars expanded), in archive order."""
    fs, path = storage.filesystem(url)

    def scan() -> list[Member]:
        with fs.open(path, "rb") as handle:
            try:
                with tarfile.open(fileobj=handle, mode="r:") as tar:
                    return _index_members(tar, 0, "")
            except tarfile.ReadError as error:
                raise UserError(f"{url} is not an uncompressed tar archive ({error}); pass a plain .tar, an "
                                "ImageFolder tree or a folder of per-class .tar files") from error

    return storage.with_retries(scan, f"indexing {url}")


def _archive_key(url: str) -> str:
    fs, path = storage.filesystem(url)
    return archive_key(url, storage.with_retries(lambda: fs.info(path), f"checking {url}"))


def cached_index(url: str, index_dir: str) -> tuple[str, list[Member]]:
    """(key, members) of one archive; reuses the index an earlier run wrote if the archive is unchanged."""
    key = _archive_key(url)
    record_url = storage.join(index_dir, hashlib.sha256(url.encode("utf-8")).hexdigest()[:24] + ".json")
    if storage.exists(storage.digest_url(record_url)):  # a record written before digests is indexed again
        try:
            record = json.loads(storage.read_verified(record_url))
        except (ValueError, FileNotFoundError, storage.IntegrityError) as error:
            log.warning("the index of %s at %s is unusable (%s); indexing it again", url, record_url,
                        storage.describe(error))
            record = {}
        if record.get("key") == key and record.get("version") == INDEX_VERSION:
            return key, [Member(*entry) for entry in record["members"]]
    members = index_tar(url)
    record = {"key": key, "version": INDEX_VERSION,
              "members": [[m.path, m.offset, m.size] + ([m.text] if m.text is not None else []) for m in members]}
    try:
        storage.write_verified(record_url, json.dumps(record, ensure_ascii=False))
    except OSError as error:  # a cache: a read-only or full place costs a re-index next time, not the run
        log.warning("could not keep the index of %s at %s (%s); it will be read again next time", url, record_url,
                    error)
    return key, members


def index_all(urls: list[str], index_dir: str, workers: int) -> list[tuple[str, list[Member]]]:
    with ThreadPoolExecutor(max(1, min(workers, len(urls)))) as pool:  # I/O bound: threads suffice
        return list(pool.map(lambda url: cached_index(url, index_dir), urls))


def _is_sample(path: str) -> bool:
    return not is_ignored_name(path) and is_image_name(path)


def _class_and_image(path: str) -> tuple[str, str] | None:
    """`<class>/<image>` (or `<class>.tar/<image>`, an inner class tar) -> (class, image); None if flat."""
    if "/" not in path:
        return None
    top, image = path.split("/", 1)
    return top.removesuffix(TAR_SUFFIX), image


def list_single_tar(url: str, index_dir: str) -> dict[str, ArchiveListing]:
    """Split -> samples of one tar holding class folders (or class tars), optionally under train/ and val/."""
    key, members = index_all([url], index_dir, 1)[0]
    archive_name = posixpath.basename(url.rstrip("/"))
    tops = {m.path.split("/", 1)[0] for m in members if "/" in m.path}
    splits = [split for split in SPLITS if split in tops] or [None]
    listings = {split or "train": ArchiveListing([url], [key]) for split in splits}
    flat: dict[str, int] = {}
    for member in members:
        split, path = None, member.path
        if splits != [None]:
            split, _, path = member.path.partition("/")
            if split not in listings:
                listings[splits[0]].ignored.append(f"{archive_name}/{member.path}")
                continue
        listing = listings[split or "train"]
        parsed = _class_and_image(path)
        if not _is_sample(path) or parsed is None:
            listing.ignored.append(f"{archive_name}/{member.path}")
            if _is_sample(path):
                flat[split or "train"] = flat.get(split or "train", 0) + 1
            continue
        listing.add(0, member, "/".join(parsed), f"{archive_name}/{member.path}")
    for split, listing in listings.items():
        if flat.get(split) and not listing.names:
            where = f"{split}/ of {url}" if splits != [None] else url
            raise UserError(f"{where} holds {flat[split]} image files outside class folders: {FLAT_TAR_HINT}")
    return listings


def list_class_tars(root: str, tar_urls: list[str], indexed: list[tuple[str, list[Member]]]) -> ArchiveListing:
    """Samples of a folder of per-class tars: the class is the tar's name, members are its images.

    `indexed` holds each tar's (key, members), from `index_all`.
    """
    if len(tar_urls) == 1:
        raise UserError(f"{root} holds a single tar, {posixpath.basename(tar_urls[0])}, which would be a "
                        "dataset of one class; pass the tar itself as --source if it holds <class>/ folders "
                        f"(or pass a folder of per-class tars); {FLAT_TAR_HINT}")
    listing = ArchiveListing(archives=list(tar_urls))
    for number, (url, (key, members)) in enumerate(zip(tar_urls, indexed, strict=True)):
        listing.keys.append(key)
        archive_name = posixpath.basename(url)
        class_name = archive_name.removesuffix(TAR_SUFFIX)
        for member in members:
            if _is_sample(member.path):
                image = member.path.removeprefix(class_name + "/")
                listing.add(number, member, f"{class_name}/{image}", f"{archive_name}/{member.path}")
            else:
                listing.ignored.append(f"{archive_name}/{member.path}")
    return listing


def _runs(requests: list[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """Byte ranges sorted by start -> merged (start, end, request numbers) runs with small gaps bridged."""
    order = sorted(range(len(requests)), key=lambda n: requests[n][0])
    runs: list[tuple[int, int, list[int]]] = []
    for n in order:
        start, end = requests[n]
        if runs and start - runs[-1][1] <= RUN_GAP_BYTES:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end), runs[-1][2] + [n])
        else:
            runs.append((start, end, [n]))
    return runs


def read_members(archives: list[str], members: list[list[Any]]) -> dict[str, bytes | Exception]:
    """Sample name -> bytes (or the read error) for members given as [name, label, archive, member, offset,
    size]; neighbouring members of one archive come in one ranged request, all requests concurrently."""
    fs, _ = storage.filesystem(archives[0])
    by_archive: dict[int, list[list[Any]]] = {}
    for member in members:
        by_archive.setdefault(member[2], []).append(member)
    paths, starts, ends, groups = [], [], [], []
    for archive, group in by_archive.items():
        for start, end, numbers in _runs([(m[4], m[4] + m[5]) for m in group]):
            paths.append(storage.filesystem(archives[archive])[1])
            starts.append(start)
            ends.append(end)
            groups.append([group[n] for n in numbers])
    what = f"reading members of {archives[0]}" + (" and other archives" if len(by_archive) > 1 else "")
    blobs = storage.with_retries(lambda: fs.cat_ranges(paths, starts, ends, on_error="return"), what)
    found: dict[str, bytes | Exception] = {}
    for blob, start, end, group in zip(blobs, starts, ends, groups, strict=True):
        for name, _, _, _, offset, size in group:
            if isinstance(blob, Exception):
                found[name] = blob
            elif len(blob) < end - start:
                found[name] = EOFError(f"the archive is shorter than its index ({len(blob)} of {end - start} "
                                       "bytes); it changed after indexing")
            else:
                found[name] = bytes(blob[offset - start:offset - start + size])
    return found
