"""`unmix-swav stage`: validate every image of an ImageFolder tree, of tar archives of one (see
trainer/data/archives.py) or of a WebDataset shard set (trainer/data/wds.py) and pack it into WebDataset
shards + manifest. What --source holds is told by trainer/data/layout.py's `probe`, as for reading; how
one shard is written (keys, members, records) is trainer/data/shard_writer.py.

Layout written under --dest (any fsspec URL), format unmix-swav-staged/2:
  <split>/<split>-00000.tar  WebDataset shards: per sample <key>.<ext> (the original bytes), <key>.cls (class
                             index), <key>.json (original file name, label, class name, split); keys unique,
                             without dots; names brace-friendly: train/train-{00000..00012}.tar
  <split>/<split>-00000.json what went into the shard (offsets, sizes, labels, skipped files): resume record
  <split>/index.npz          per sample: shard, offset, size, label, name, key (what StagedSource reads)
  wids-<split>.json          the split as a wids index ({"wids_version": 1, "shardlist": [...]})
  classes.txt                class names, line i = class i (classes.json when a name holds a line break)
  manifest.json              format, classes, per-split counts, brace pattern and shards with sha256, skipped
                             files and reasons, the source, its listing digest and the options
  archive-index/*.json       per source archive: its members' offsets and sizes (resume without re-reading)
The manifest is written last, so its presence means a complete dataset. Every shard holds a mix of
classes (the sampler reads shard by shard): files of a folder are shuffled across shards (fixed seed);
members of archives are striped, each shard taking one contiguous run of every class of every archive
(of every source shard, for WebDataset sources), so that shard writers read archives in long byte ranges.
Re-running with the same source and options reuses the complete dataset after checking it (seconds);
an interrupted run resumes, reusing every shard whose record matches the plan. A staged dataset given as
--source is verified and reused, never copied. Datasets of format 1 (members named by their source path,
labels only in index.npz) are read as before.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import posixpath
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer import storage
from trainer.data import wds
from trainer.data.archives import (
    INDEX_FOLDER,
    ArchiveListing,
    is_tar_name,
    list_class_tars,
    list_single_tar,
    refuse_compressed,
)
from trainer.data.layout import SUPPORTED_LAYOUTS, probe, tar_contents
from trainer.data.names import MANIFEST, STAGED_FORMAT, printable_name
from trainer.data.readers import data_root, list_folder, read_index, read_manifest
from trainer.data.shard_writer import (
    plan_digest,
    plan_shards,
    plan_striped_shards,
    reusable_record,
    sample_keys,
    write_shard,
)
from trainer.data.synthetic import BUILTIN_PREFIX, BUILTIN_SOURCES, make_generated
from trainer.errors import UserError
from trainer.run.workers import owned_process_pool, sigterm_raises

MAX_IGNORED_LISTED = 1000
# The smallest value of each builtin:<kind> option (the generators also cap num_classes per kind).
BUILTIN_MINIMUMS = {"num_classes": 2, "images_per_class": 1, "val_images_per_class": 0, "image_size": 16}
# Staged names go into tar headers, JSON records and the index as UTF-8, which these names cannot be.
VERIFY_CHOICES = ("size", "sha256")
NON_UTF8_REASON = "file name is not valid UTF-8 (shown with \\x escapes); rename it to stage it"
Progress = Callable[[str], None]


@dataclass
class FolderListing:
    """One split's samples as files of an ImageFolder tree, names relative to `root`."""

    root: str
    names: list[str]
    sizes: list[int]
    ignored: list[str]
    not_regular: dict[str, str] = field(default_factory=dict)  # FIFOs, sockets...: name -> what it is
    non_utf8_names: list[str] = field(default_factory=list)  # images left out for their name, printable


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _folder_listing(root: str) -> FolderListing:
    found = list_folder(root)
    bad_names = set(found.non_utf8)
    kept = [(name, size) for name, size in zip(found.images, found.sizes, strict=True) if name not in bad_names]
    return FolderListing(root, [name for name, _ in kept], [size for _, size in kept], found.ignored,
                         found.not_regular, [printable_name(name) for name in found.non_utf8])


def _listing_skips(split: str, listing: FolderListing | ArchiveListing) -> list[dict[str, str]]:
    """Manifest `skipped` entries of images the listing already refused: names that are not UTF-8, and
    WebDataset samples without a usable label."""
    if isinstance(listing, ArchiveListing):
        return [{"split": split, "path": path, "reason": reason, "archive": archive}
                for path, reason, archive in listing.bad]
    return [{"split": split, "path": name, "reason": NON_UTF8_REASON} for name in listing.non_utf8_names]


def _split_listing(root: str, tars: list[str],
                   indexed: dict[str, tuple[str, list[Any]]]) -> FolderListing | ArchiveListing:
    """A folder holding per-class .tar files (`tars`, already indexed), or an ImageFolder tree."""
    if tars:
        return list_class_tars(root, tars, [indexed[tar] for tar in tars])
    listing = _folder_listing(root)
    if not listing.names:
        fs, path = storage.filesystem(root)
        entries = storage.with_retries(lambda: fs.ls(path, detail=True), f"listing {root}")
        for entry in entries:
            if entry["type"] == "file":
                refuse_compressed(storage.join(root, os.path.basename(entry["name"].rstrip("/"))))
    return listing


def _shard_set_listings(shard_set: wds.ShardSet) -> dict[str, ArchiveListing]:
    """Per split, the shard set as a staging source: every sample a member of an archive, labelled."""
    listings = {}
    for split, samples in shard_set.splits.items():
        listing = ArchiveListing(archives=list(shard_set.urls), keys=list(shard_set.keys), labels=[],
                                 classes=shard_set.classes)
        for sample in samples:
            listing.names.append(sample.name)
            listing.sizes.append(sample.image.size)
            listing.locations.append((sample.shard, sample.image.path, sample.image.offset))
            listing.labels.append(int(sample.label or 0))
        mine = set(shard_set.split_shards[split])
        listing.bad = [[path, reason, shard_set.urls[number]] for number, path, reason in shard_set.bad
                       if number in mine]
        listing.ignored = list(shard_set.ignored) if split == next(iter(shard_set.splits)) else []
        listings[split] = listing
    return listings


def _split_listings(source: str, dest: str, workers: int) -> dict[str, FolderListing | ArchiveListing]:
    """Split name -> its samples: train/ and val/ when the source holds them, else the source as train.

    What tars hold is read from their members (trainer/data/layout.py: `tar_contents`), never guessed from names."""
    layout = probe(source)
    fs, root = storage.filesystem(source)
    index_dir = storage.join(dest, INDEX_FOLDER)
    if layout.kind in ("tar", "file") and fs.isfile(root):
        refuse_compressed(source)
        if not is_tar_name(source):
            raise UserError(f"--source {source} is a file but not a .tar archive; {SUPPORTED_LAYOUTS}")
    elif layout.kind not in ("shards", "tar-folders", "imagefolder"):
        raise UserError(f"--source {source} does not exist or is not a folder; pass an ImageFolder tree "
                        f"(class folders), a folder holding train/ and val/, a .tar of either, a folder of "
                        f"per-class .tar files, WebDataset shards (a folder, a brace pattern or a wids index), "
                        f"a staged dataset, or one of {', '.join(BUILTIN_SOURCES)}")
    contents, indexed = (tar_contents(layout, index_dir, workers, f"--source {source}")
                         if layout.kind in ("tar", "tar-folders") else ("", {}))
    if layout.kind == "shards" or contents == "webdataset":
        return _shard_set_listings(wds.read_shard_set(source, index_dir, workers))
    if layout.kind == "tar":
        return list_single_tar(source, index_dir)
    return {split: _split_listing(split_root, layout.tar_groups.get(split_root, []), indexed)
            for split, split_root in layout.splits.items()}


def _run_tasks(tasks: list[dict[str, Any]], workers: int, split: str, total_images: int,
               progress: Progress) -> list[dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for number, task in enumerate(tasks):
        record = reusable_record(task)
        if record is None:
            todo.append((number, task))
        else:
            records[number] = record
    done_images = sum(len(r["members"]) + len(r["skipped"]) for r in records.values())
    progress(f"stage {split}: {len(tasks)} shards, {total_images} images; {len(records)} shards done by "
             f"an earlier run, {len(todo)} to write with {workers} workers")
    started = time.monotonic()

    def report(number: int, record: dict[str, Any]) -> None:
        nonlocal done_images
        records[number] = record
        done_images += len(record["members"]) + len(record["skipped"])
        rate = done_images / max(time.monotonic() - started, 1e-6)
        skipped = sum(len(r["skipped"]) for r in records.values())
        progress(f"stage {split}: {len(records)}/{len(tasks)} shards, {done_images}/{total_images} images, "
                 f"{skipped} skipped, {rate:.0f} images/s")

    if workers <= 1 or len(todo) <= 1:
        for number, task in todo:
            report(number, write_shard(task))
    else:
        # fork: workers inherit the imports; fsspec resets its event loop and instance cache in the child.
        # The pool's workers end with this process, however it ends (trainer.run.workers).
        with owned_process_pool(workers) as pool:
            futures = {pool.submit(write_shard, task): number for number, task in todo}
            for future in as_completed(futures):
                report(futures[future], future.result())
    return [records[number] for number in range(len(tasks))]


def _stage_split(split: str, listing: FolderListing | ArchiveListing, classes: list[str], dest: str,
                 shard_bytes: int, workers: int, seed: int,
                 progress: Progress) -> tuple[dict[str, Any], list[dict[str, str]]]:
    label_of = {name: label for label, name in enumerate(classes)}
    labels = listing.labels if isinstance(listing, ArchiveListing) and listing.labels is not None else \
        [label_of[path.split("/", 1)[0]] for path in listing.names]
    keys = sample_keys(listing.names)
    if isinstance(listing, ArchiveListing):
        members = [[path, label, *location, size] for path, label, location, size
                   in zip(listing.names, labels, listing.locations, listing.sizes, strict=True)]
        # Per-class tars: every shard takes a run of every class; WebDataset shards are mixed already, so
        # every shard takes a run of each of them (one ranged read per source shard).
        groups = [location[0] if listing.labels is not None else (location[0], label)
                  for location, label in zip(listing.locations, labels, strict=True)]
        plan = plan_striped_shards(groups, listing.sizes, shard_bytes, seed)
        reads: dict[str, Any] = {"archives": listing.archives}
    else:
        members = [[path, label] for path, label in zip(listing.names, labels, strict=True)]
        plan = plan_shards(listing.sizes, shard_bytes, seed)
        reads = {"source": listing.root}
    tasks = []
    width = max(5, len(str(len(plan) - 1)))
    classes_digest = plan_digest(classes)
    for number, indices in enumerate(plan):
        shard_members, shard_keys = [members[i] for i in indices], [keys[i] for i in indices]
        # Archive keys (size, version) in the plan: a changed archive invalidates the shards read from it.
        versions = sorted({listing.keys[m[2]] for m in shard_members}) if "archives" in reads else []
        name = f"{split}/{split}-{number:0{width}d}"  # the split in the file name too: names unique across splits
        tasks.append({**reads, "dest": dest, "members": shard_members, "keys": shard_keys, "classes": classes,
                      "split": split, "path": f"{name}.tar", "record": f"{name}.json",
                      "plan": plan_digest([STAGED_FORMAT, classes_digest, *shard_members, *shard_keys,
                                            *versions])})
    records = _run_tasks(tasks, workers, split, len(members), progress)

    kept = [(number, m) for number, r in enumerate(records) for m in r["members"]]
    index = {"shard": np.array([n for n, _ in kept], dtype=np.int32),
             "offset": np.array([m[2] for _, m in kept], dtype=np.int64),
             "size": np.array([m[3] for _, m in kept], dtype=np.int64),
             "labels": np.array([m[1] for _, m in kept], dtype=np.int64),
             "names": np.array([m[0].encode("utf-8") for _, m in kept], dtype=np.bytes_),
             "keys": np.array([m[4].encode("ascii") for _, m in kept], dtype=np.bytes_)}
    buffer = io.BytesIO()
    np.savez(buffer, **index)
    index_bytes = buffer.getvalue()
    storage.atomic_write_bytes(storage.join(dest, split, "index.npz"), index_bytes)
    modes: Counter[str] = Counter()
    for record in records:
        modes.update(record.get("modes", {}))
    info = {
        "count": len(kept),
        "class_counts": np.bincount(index["labels"], minlength=len(classes)).tolist(),
        "modes": dict(sorted(modes.items())),
        "index": f"{split}/index.npz",
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "shards": [{"path": r["path"], "size": r["size"], "sha256": r["sha256"], "count": len(r["members"])}
                   for r in records],
        "pattern": f"{split}/{split}-{{{0:0{width}d}..{len(records) - 1:0{width}d}}}.tar",
        "wids_index": f"wids-{split}.json",
    }
    wids_index = {"wids_version": 1, "name": split,
                  "shardlist": [{"url": r["path"], "nsamples": len(r["members"]), "filesize": r["size"]}
                                for r in records]}
    storage.write_verified(storage.join(dest, info["wids_index"]), json.dumps(wids_index, indent=1))
    skipped = [{"split": split, "path": entry[0], "reason": entry[1],
                **({"archive": entry[2]} if entry[2:] else {})} for r in records for entry in r["skipped"]]
    return info, skipped


def _location(url: str) -> tuple[str, str]:
    """(protocol, absolute path without a trailing slash) of `url`: two spellings of one place compare equal."""
    fs, path = storage.filesystem(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, (os.path.realpath(path) if storage.is_local(url) else path).rstrip("/")


def check_dest_outside(source: str, dest: str) -> None:
    """Refuse a --dest at or under --source: a rerun would list the shards written there as source images."""
    (source_protocol, source_path), (dest_protocol, dest_path) = _location(source), _location(dest)
    if source_protocol == dest_protocol and (dest_path + "/").startswith(source_path + "/"):
        where = "is" if dest_path == source_path else "is inside"
        raise UserError(f"--dest {dest} {where} --source {source}; staging would read its own output: pick a "
                        "--dest outside the source folder")


def _listing_digest(listings: dict[str, FolderListing | ArchiveListing]) -> str:
    """What the source holds, as staging sees it (names, sizes, archive versions, labels): equal digests
    mean a re-run would write the same dataset."""
    digest = hashlib.sha256()
    for split, listing in listings.items():
        extra = [listing.keys, listing.locations, listing.labels, listing.bad] \
            if isinstance(listing, ArchiveListing) else [listing.non_utf8_names]
        digest.update(json.dumps([split, listing.names, listing.sizes, *extra], ensure_ascii=False).encode())
    return digest.hexdigest()


def _split_folders_of(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    folders: dict[str, list[dict[str, Any]]] = {}
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            folders.setdefault(posixpath.dirname(shard["path"]), []).append(shard)
    return folders


def _file_sizes(folder: str) -> dict[str, int]:
    """Name -> size of the files in `folder` (one listing request); {} when it does not exist."""
    fs, path = storage.filesystem(folder)
    try:
        found = storage.with_retries(lambda: fs.ls(path, detail=True), f"listing {folder}")
    except FileNotFoundError:
        return {}
    return {posixpath.basename(entry["name"].rstrip("/")): entry.get("size") for entry in found}


def verify_staged(url: str, manifest: dict[str, Any], checksums: bool = False, workers: int = 8) -> None:
    """Check a staged dataset against its manifest: every index file by sha256, every shard by size (one
    listing per folder) or, with `checksums`, by sha256. UserError naming the first mismatch."""
    root = data_root(url, manifest)
    for split, info in manifest["splits"].items():  # every path it names stays inside the dataset
        for number, shard in enumerate(info["shards"]):
            storage.check_relative(shard["path"], f"{storage.join(url, MANIFEST)}: {split} shard {number}")
    for info in manifest["splits"].values():
        read_index(url, info, manifest)
    for folder, shards in _split_folders_of(manifest).items():
        sizes = _file_sizes(storage.join(root, folder))
        for shard in shards:
            size = sizes.get(posixpath.basename(shard["path"]))
            if size != shard["size"]:
                what = "is missing" if size is None else f"has {size} bytes"
                raise UserError(f"{storage.join(root, shard['path'])} {what}, the manifest says {shard['size']}; "
                                "the staged dataset is damaged: stage the original source again")
    if checksums:
        shards = [shard for group in _split_folders_of(manifest).values() for shard in group]

        def check(shard: dict[str, Any]) -> str | None:
            shard_url = storage.join(root, shard["path"])
            return None if hashlib.sha256(storage.read_bytes(shard_url)).hexdigest() == shard["sha256"] else shard_url

        with ThreadPoolExecutor(max(1, min(workers, len(shards)))) as pool:
            bad = [found for found in pool.map(check, shards) if found]
        if bad:
            raise UserError(f"{len(bad)} shards do not match their manifest sha256 (e.g. {bad[0]}); the staged "
                            "dataset is damaged: stage the original source again")


def _counts(manifest: dict[str, Any]) -> str:
    return ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())


def _reusable(dest: str, source: str, options: dict[str, Any], generator: dict[str, Any] | None,
              digest: str | None, max_bad_fraction: float, progress: Progress) -> dict[str, Any] | None:
    """The complete manifest at `dest` when it was staged from `source` with these options (and, for a
    source that is not generated, from the same listing) and still verifies; None otherwise."""
    if not storage.exists(storage.join(dest, MANIFEST)):
        return None
    try:
        manifest = read_manifest(dest)
    except UserError:
        return None
    same = (manifest["format"] == STAGED_FORMAT and manifest.get("source") == source and not manifest.get("data_root")
            and {k: manifest.get("options", {}).get(k) for k in options} == options
            and manifest.get("generator") == generator and (digest is None or manifest.get("source_digest") == digest))
    total = sum(info["count"] for info in manifest["splits"].values()) + len(manifest.get("skipped", []))
    if not same or len(manifest.get("skipped", [])) / max(total, 1) > max_bad_fraction:
        return None
    try:
        verify_staged(dest, manifest)
    except UserError as error:
        progress(f"stage: the dataset at {dest} cannot be reused ({error}); staging again")
        return None
    return manifest


def _report_reuse(dest: str, manifest: dict[str, Any], started: float, progress: Progress) -> dict[str, Any]:
    progress(f"stage: reused {storage.join(dest, MANIFEST)}: complete, same source and options "
             f"({len(manifest['classes'])} classes, {_counts(manifest)} images); index checksums and shard sizes "
             f"verified in {time.monotonic() - started:.1f}s")
    return manifest


def reuse_staged(source: str, dest: str, checksums: bool, workers: int, progress: Progress) -> dict[str, Any]:
    """`stage --source <staged dataset>`: verify it and use it as it is. A --dest elsewhere gets a manifest
    that points at the source's shards (`data_root`), so that it works as --data_path; nothing is copied."""
    started = time.monotonic()
    manifest = read_manifest(source)
    verify_staged(source, manifest, checksums, workers)
    root = data_root(source, manifest)
    if storage.is_local(root) and "://" not in root:
        root = os.path.abspath(root)
    note = "" if manifest["format"] == STAGED_FORMAT else (
        f"; it is {manifest['format']}: its shards carry no WebDataset labels (every command reads it); stage "
        "the original source into a new --dest to get them")
    if _location(source) != _location(dest):
        if storage.exists(storage.join(dest, MANIFEST)):
            existing = json.loads(storage.read_verified(storage.join(dest, MANIFEST)))
            if not isinstance(existing, dict) or existing.get("data_root") != root:
                raise UserError(f"--dest {dest} already holds another staged dataset; pick a new --dest (or pass "
                                f"{source} itself as --data_path)")
        manifest = {**manifest, "data_root": root, "reused_from": source}
        storage.write_verified(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False))
        note = f"; wrote {storage.join(dest, MANIFEST)}, which points at its shards" + note
    checked = "sha256" if checksums else "sizes"
    progress(f"stage: reused the staged dataset {source} ({len(manifest['classes'])} classes, {_counts(manifest)} "
             f"images): manifest, index checksums and shard {checked} verified in "
             f"{time.monotonic() - started:.1f}s{note}")
    return manifest


def stage_folder(source: str, dest: str, shard_size_mb: float = 256, workers: int = 1,
                 max_bad_fraction: float = 0.01, seed: int = 0,
                 progress: Progress = _print_progress) -> dict[str, Any]:
    started = time.monotonic()
    check_dest_outside(source, dest)
    listings = _split_listings(source, dest, workers)
    digest = _listing_digest(listings)
    options = {"shard_size_mb": shard_size_mb, "seed": seed}
    reused = _reusable(dest, source, options, None, digest, max_bad_fraction, progress)
    if reused is not None:
        return _report_reuse(dest, reused, started, progress)
    named = [listing.classes for listing in listings.values()
             if isinstance(listing, ArchiveListing) and listing.classes is not None]
    classes = named[0] if named else \
        sorted({path.split("/", 1)[0] for listing in listings.values() for path in listing.names})
    if not classes or not any(listing.names for listing in listings.values()):
        raise UserError(f"no images in class folders under {source}; expected <class>/<image>.jpg files "
                        f"(in a folder or a .tar) or a folder of per-class .tar files; {SUPPORTED_LAYOUTS}")
    ignored = [storage.join(split, path) for split, listing in listings.items() for path in listing.ignored]
    not_regular = {storage.join(split, path): kind for split, listing in listings.items()
                   if isinstance(listing, FolderListing) for path, kind in listing.not_regular.items()}
    skipped = [entry for split, listing in listings.items() for entry in _listing_skips(split, listing)]
    total = sum(len(listing.names) for listing in listings.values()) + len(skipped)

    splits = {}
    for split, listing in listings.items():
        splits[split], split_skipped = _stage_split(split, listing, classes, dest, int(shard_size_mb * 2**20),
                                                    workers, seed, progress)
        skipped += split_skipped
    bad_fraction = len(skipped) / max(total, 1)
    report = {"source": source, "images": total, "skipped": skipped, "bad_fraction": bad_fraction}
    if bad_fraction > max_bad_fraction:
        storage.write_text(storage.join(dest, "staging-report.json"), json.dumps(report, indent=1))
        first = "; ".join(f"{s.get('archive', s['split'])}/{s['path']}: {s['reason']}" for s in skipped[:3])
        raise UserError(f"{len(skipped)} of {total} files ({bad_fraction:.1%}) under {source} are not "
                        f"decodable images, over --max_bad_fraction {max_bad_fraction}; fix or remove them "
                        f"(all listed in {storage.join(dest, 'staging-report.json')}), e.g. {first}")
    classes_file = "classes.txt" if not any("\n" in name or "\r" in name for name in classes) else "classes.json"
    storage.write_verified(storage.join(dest, classes_file),
                       "".join(f"{name}\n" for name in classes) if classes_file == "classes.txt"
                       else json.dumps(classes, ensure_ascii=False))
    manifest = {
        "format": STAGED_FORMAT,
        "complete": True,
        "layout": "webdataset: <key>.<ext> (original bytes) + <key>.cls (class index) + <key>.json",
        "source": source,
        "source_digest": digest,
        "classes": classes,
        "classes_file": classes_file,
        "splits": splits,
        "skipped": skipped,
        "ignored": {"count": len(ignored), "paths": ignored[:MAX_IGNORED_LISTED],
                    "not_regular": dict(list(not_regular.items())[:MAX_IGNORED_LISTED])},
        "options": {**options, "max_bad_fraction": max_bad_fraction},
    }
    storage.write_verified(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False))
    progress(f"stage: wrote {storage.join(dest, MANIFEST)}: {len(classes)} classes, {_counts(manifest)} images, "
             f"{len(skipped)} skipped, {len(ignored)} non-image or special files ignored")
    return manifest


def stage_dataset(source: str, dest: str, shard_size_mb: float = 256, workers: int | None = None,
                  max_bad_fraction: float = 0.01, seed: int = 0, num_classes: int = 10,
                  images_per_class: int = 60, val_images_per_class: int | None = None, image_size: int = 64,
                  verify: str = "size", progress: Progress = _print_progress) -> dict[str, Any]:
    """Stage `source` (a folder, tars, WebDataset shards or a generated `builtin:<kind>`) into `dest`, or
    reuse what is there (a staged `source`, or a complete `dest` of the same source and options); returns
    the manifest."""
    if not shard_size_mb > 0:
        raise UserError(f"--shard_size_mb must be positive, not {shard_size_mb}")
    if not 0 <= max_bad_fraction <= 1:
        raise UserError(f"--max_bad_fraction is a fraction between 0 and 1, not {max_bad_fraction}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers} is out of range; use 0 (in this process), 1 or more, or leave it "
                        "out for one per CPU (at most 8)")
    if seed < 0:
        raise UserError(f"--seed {seed} is out of range; use 0 or more")
    if verify not in VERIFY_CHOICES:
        raise UserError(f"--verify {verify!r} is not one of {', '.join(VERIFY_CHOICES)}")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if not source.startswith(BUILTIN_PREFIX):
        if probe(source).kind == "staged":
            return reuse_staged(source.rstrip("/"), dest, verify == "sha256", workers, progress)
        return stage_folder(source, dest, shard_size_mb, workers, max_bad_fraction, seed, progress)
    counts = {"num_classes": num_classes, "images_per_class": images_per_class,
              "val_images_per_class": val_images_per_class, "image_size": image_size}
    for name, value in counts.items():
        if value is not None and value < BUILTIN_MINIMUMS[name]:
            raise UserError(f"--{name} {value} is out of range for {source}; use {BUILTIN_MINIMUMS[name]} or more")
    kind = source.removeprefix(BUILTIN_PREFIX)
    val_count = images_per_class // 3 if val_images_per_class is None else val_images_per_class
    generator = {**counts, "val_images_per_class": val_count}
    started = time.monotonic()
    reused = _reusable(dest, source, {"shard_size_mb": shard_size_mb, "seed": seed}, generator, None,
                       max_bad_fraction, progress)
    if reused is not None:
        return _report_reuse(dest, reused, started, progress)
    generated = tempfile.mkdtemp(prefix=f"unmix-{kind}-")
    try:
        make_generated(kind, generated, num_classes, images_per_class, val_count, image_size, seed, progress)
        manifest = stage_folder(generated, dest, shard_size_mb, workers, max_bad_fraction, seed, progress)
    finally:
        shutil.rmtree(generated, ignore_errors=True)
    manifest["source"] = source
    manifest["generator"] = generator
    storage.write_verified(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help=f"ImageFolder tree (or a folder holding train/ and val/), a plain .tar of "
                             f"either, a folder of per-class .tar files (ImageNet's), WebDataset shards (a "
                             f"folder, a brace pattern or a wids index), or a staged dataset (reused), local or "
                             f"s3://; or {' or '.join(BUILTIN_SOURCES)} to generate a small labelled dataset")
    parser.add_argument("--dest", required=True, help="where to write shards and manifest.json (any fsspec URL)")
    parser.add_argument("--shard_size_mb", type=float, default=256, help="target size of one tar shard")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel processes; 0: in this process (default: CPUs, max 8)")
    parser.add_argument("--max_bad_fraction", type=float, default=0.01,
                        help="fail instead of staging when more than this fraction of files is undecodable")
    parser.add_argument("--seed", type=int, default=0, help="shuffle of samples across shards; generated images' seed")
    parser.add_argument("--verify", choices=VERIFY_CHOICES, default="size",
                        help="when --source is a staged dataset: check its shards by size (seconds) or sha256 "
                             "(reads every shard)")
    shapes = parser.add_argument_group(f"{', '.join(BUILTIN_SOURCES)} options")
    shapes.add_argument("--num_classes", type=int, default=10)
    shapes.add_argument("--images_per_class", type=int, default=60, help="training images per class")
    shapes.add_argument("--val_images_per_class", type=int, default=None, help="default: a third of the above")
    shapes.add_argument("--image_size", type=int, default=64)


def run(args: argparse.Namespace) -> None:
    with sigterm_raises("SIGTERM: staging stopped; the shards written so far are kept, rerun the same command "
                        "to finish"):
        stage_dataset(args.source, args.dest, shard_size_mb=args.shard_size_mb, workers=args.workers,
                      max_bad_fraction=args.max_bad_fraction, seed=args.seed, num_classes=args.num_classes,
                      images_per_class=args.images_per_class, val_images_per_class=args.val_images_per_class,
                      image_size=args.image_size, verify=args.verify)
