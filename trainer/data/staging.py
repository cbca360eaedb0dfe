"""`unmix-swav stage`: validate every image of an ImageFolder tree (or of tar archives of one: see
trainer/data/archives.py) and pack it into tar shards + manifest.

Layout written under --dest (any fsspec URL):
  <split>/shard-00000.tar   original image bytes, members named by their path in the source
  <split>/shard-00000.json  what went into the shard (offsets, sizes, labels, skipped files): resume record
  <split>/index.npz         per sample: shard, offset, size, label, name (what StagedSource reads)
  manifest.json             classes, per-split counts and shards with sha256, skipped files and reasons
  archive-index/*.json      per source archive: its members' offsets and sizes (resume without re-reading)
The manifest is written last, so its presence means a complete dataset. Every shard holds a mix of
classes (the sampler reads shard by shard): files of a folder are shuffled across shards (fixed seed);
members of archives are striped, each shard taking one contiguous run of every class of every archive,
so that shard writers read archives in a few long byte ranges.
Re-running with the same source and options reuses every shard whose record matches the plan.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer import storage
from trainer.data.archives import (
    INDEX_FOLDER,
    ArchiveListing,
    is_tar_name,
    list_class_tars,
    list_single_tar,
    read_members,
    refuse_compressed,
)
from trainer.data.decode import BadImage, decode, open_image_bytes
from trainer.data.sources import MANIFEST, SPLITS, STAGED_FORMAT, list_folder, printable_name
from trainer.data.synthetic import BUILTIN_PREFIX, BUILTIN_SOURCES, make_generated
from trainer.errors import UserError

READ_BATCH = 32  # files fetched concurrently by one worker (s3fs issues the GETs in parallel)
MAX_IGNORED_LISTED = 1000
# The smallest value of each builtin:<kind> option (the generators also cap num_classes per kind).
BUILTIN_MINIMUMS = {"num_classes": 2, "images_per_class": 1, "val_images_per_class": 0, "image_size": 16}
# Staged names go into tar headers, JSON records and the index as UTF-8, which these names cannot be.
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


def plan_shards(sizes: list[int], shard_bytes: int, seed: int) -> list[list[int]]:
    """Sample indices per shard: a seeded shuffle packed greedily into shards of about `shard_bytes`."""
    order = np.random.default_rng(seed).permutation(len(sizes))
    shards: list[list[int]] = [[]]
    filled = 0
    for index in order.tolist():
        cost = sizes[index] + 1024  # tar header and padding
        if shards[-1] and filled + cost > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(index)
        filled += cost
    return shards if shards[0] else []


def plan_striped_shards(groups: list[Any], sizes: list[int], shard_bytes: int,
                        seed: int) -> list[list[int]]:
    """Sample indices per shard: every group (samples in read order) cut into one contiguous run per shard.

    Shards get about `shard_bytes` each and a share of every group; a seeded rotation per group spreads
    groups smaller than the shard count over different shards.
    """
    count = max(1, -(-sum(size + 1024 for size in sizes) // shard_bytes))
    members: dict[Any, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    rotation = np.random.default_rng(seed).integers(count, size=len(members)).tolist()
    shards: list[list[int]] = [[] for _ in range(count)]
    for start, indices in zip(rotation, members.values(), strict=True):
        for number, run in enumerate(np.array_split(np.array(indices), count)):
            shards[(start + number) % count] += run.tolist()
    return [shard for shard in shards if shard]


def _plan_digest(members: list[Any]) -> str:
    return hashlib.sha256(json.dumps(members, ensure_ascii=False).encode("utf-8")).hexdigest()


def _fetch(source_url: str, relative_paths: list[str]) -> dict[str, bytes | Exception]:
    fs, root = storage.filesystem(source_url)
    full = [f"{root.rstrip('/')}/{p}" for p in relative_paths]
    found = storage.with_retries(lambda: fs.cat(full, on_error="return"), f"reading files under {source_url}")
    return {p: found.get(f, FileNotFoundError(f)) for p, f in zip(relative_paths, full, strict=True)}


def _validate(data: bytes | Exception) -> str:
    """The image's original mode when it decodes with the trainer's decoder; BadImage otherwise."""
    if isinstance(data, Exception):
        raise BadImage(f"could not be read ({type(data).__name__}: {data})")
    mode = open_image_bytes(data).mode
    decode(data)
    return mode


def _fetch_members(task: dict[str, Any], members: list[list[Any]]) -> dict[str, bytes | Exception]:
    if "archives" in task:
        return read_members(task["archives"], members)
    return _fetch(task["source"], [member[0] for member in members])


def _skip_entry(task: dict[str, Any], member: list[Any], reason: str) -> list[str]:
    """[path, reason] of a bad file; [member path, reason, archive URL] of a bad archive member."""
    if "archives" in task:
        return [member[3], reason, task["archives"][member[2]]]
    return [member[0], reason]


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Validate and pack one shard's files; upload the tar, then its record. Runs in a worker process.

    Members are [path, label] (files under task["source"]) or [path, label, archive number, member path,
    offset, size] (members of task["archives"]).
    """
    members: list[list[Any]] = task["members"]
    buffer = io.BytesIO()
    packed, skipped, modes = [], [], Counter()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for start in range(0, len(members), READ_BATCH):
            chunk = members[start:start + READ_BATCH]
            contents = _fetch_members(task, chunk)
            for member in chunk:
                path, label = member[0], member[1]
                data = contents[path]
                try:
                    modes[_validate(data)] += 1
                except BadImage as error:
                    skipped.append(_skip_entry(task, member, str(error)))
                    continue
                assert isinstance(data, bytes)
                info = tarfile.TarInfo(path)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
                data_offset = tar.offset - tarfile.BLOCKSIZE * -(-len(data) // tarfile.BLOCKSIZE)
                packed.append([path, label, data_offset, len(data)])
    shard_bytes = buffer.getvalue()
    storage.atomic_write_bytes(storage.join(task["dest"], task["path"]), shard_bytes)
    record = {"plan": task["plan"], "path": task["path"], "size": len(shard_bytes),
              "sha256": hashlib.sha256(shard_bytes).hexdigest(), "members": packed, "skipped": skipped,
              "modes": dict(modes)}
    storage.write_text(storage.join(task["dest"], task["record"]), json.dumps(record, ensure_ascii=False))
    return record


def _reusable_record(task: dict[str, Any]) -> dict[str, Any] | None:
    """The shard's record from an earlier run, if it matches this plan and its tar is complete."""
    record_url = storage.join(task["dest"], task["record"])
    if not storage.exists(record_url):
        return None
    try:
        record = json.loads(storage.read_text(record_url))
    except ValueError:
        return None
    fs, tar_path = storage.filesystem(storage.join(task["dest"], task["path"]))
    if record.get("plan") != task["plan"] or not fs.exists(tar_path) or fs.size(tar_path) != record["size"]:
        return None
    return record


def _folder_listing(root: str) -> FolderListing:
    found = list_folder(root)
    bad_names = set(found.non_utf8)
    kept = [(name, size) for name, size in zip(found.images, found.sizes, strict=True) if name not in bad_names]
    return FolderListing(root, [name for name, _ in kept], [size for _, size in kept], found.ignored,
                         found.not_regular, [printable_name(name) for name in found.non_utf8])


def _listing_skips(split: str, listing: FolderListing | ArchiveListing) -> list[dict[str, str]]:
    """Manifest `skipped` entries of images the listing already refused (their names are not UTF-8)."""
    names = listing.non_utf8_names if isinstance(listing, FolderListing) else []
    return [{"split": split, "path": name, "reason": NON_UTF8_REASON} for name in names]


def _split_listing(root: str, index_dir: str, workers: int) -> FolderListing | ArchiveListing:
    """A folder holding .tar files is a folder of per-class tars; any other folder an ImageFolder tree."""
    fs, path = storage.filesystem(root)
    entries = storage.with_retries(lambda: fs.ls(path, detail=True), f"listing {root}")
    files = sorted(os.path.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "file")
    tars = [storage.join(root, name) for name in files if is_tar_name(name)]
    if tars:
        return list_class_tars(root, tars, workers, index_dir)
    listing = _folder_listing(root)
    if not listing.names:
        for name in files:
            refuse_compressed(storage.join(root, name))
    return listing


def _split_listings(source: str, dest: str, workers: int) -> dict[str, FolderListing | ArchiveListing]:
    """Split name -> its samples: train/ and val/ when the source holds them, else the source as train."""
    fs, root = storage.filesystem(source)
    index_dir = storage.join(dest, INDEX_FOLDER)
    if fs.isfile(root):
        refuse_compressed(source)
        if not is_tar_name(source):
            raise UserError(f"--source {source} is a file but not a .tar archive; pass a tar of an "
                            "ImageFolder tree, a folder, or a folder of per-class .tar files")
        return list_single_tar(source, index_dir)
    if not fs.isdir(root):
        raise UserError(f"--source {source} does not exist or is not a folder; pass an ImageFolder tree "
                        f"(class folders), a folder holding train/ and val/, a .tar of either, a folder of "
                        f"per-class .tar files, or one of {', '.join(BUILTIN_SOURCES)}")
    if fs.exists(f"{root.rstrip('/')}/{MANIFEST}"):
        raise UserError(f"--source {source} is already a staged dataset; pass it as --data_path directly")
    names = {os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    roots = {split: storage.join(source, split) for split in SPLITS if split in names} or {"train": source}
    return {split: _split_listing(split_root, index_dir, workers) for split, split_root in roots.items()}


def _run_tasks(tasks: list[dict[str, Any]], workers: int, split: str, total_images: int,
               progress: Progress) -> list[dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for number, task in enumerate(tasks):
        record = _reusable_record(task)
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
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(write_shard, task): number for number, task in todo}
            for future in as_completed(futures):
                report(futures[future], future.result())
    return [records[number] for number in range(len(tasks))]


def _stage_split(split: str, listing: FolderListing | ArchiveListing, classes: list[str], dest: str,
                 shard_bytes: int, workers: int, seed: int,
                 progress: Progress) -> tuple[dict[str, Any], list[dict[str, str]]]:
    label_of = {name: label for label, name in enumerate(classes)}
    labels = [label_of[path.split("/", 1)[0]] for path in listing.names]
    if isinstance(listing, ArchiveListing):
        members = [[path, label, *location, size] for path, label, location, size
                   in zip(listing.names, labels, listing.locations, listing.sizes, strict=True)]
        groups = [(location[0], label) for location, label in zip(listing.locations, labels, strict=True)]
        plan = plan_striped_shards(groups, listing.sizes, shard_bytes, seed)
        reads: dict[str, Any] = {"archives": listing.archives}
    else:
        members = [[path, label] for path, label in zip(listing.names, labels, strict=True)]
        plan = plan_shards(listing.sizes, shard_bytes, seed)
        reads = {"source": listing.root}
    tasks = []
    for number, indices in enumerate(plan):
        shard_members = [members[i] for i in indices]
        # Archive keys (size, version) in the plan: a changed archive invalidates the shards read from it.
        versions = sorted({listing.keys[m[2]] for m in shard_members}) if "archives" in reads else []
        tasks.append({**reads, "dest": dest, "members": shard_members,
                      "plan": _plan_digest([*shard_members, *versions]),
                      "path": f"{split}/shard-{number:05d}.tar", "record": f"{split}/shard-{number:05d}.json"})
    records = _run_tasks(tasks, workers, split, len(members), progress)

    kept = [(number, m) for number, r in enumerate(records) for m in r["members"]]
    index = {"shard": np.array([n for n, _ in kept], dtype=np.int32),
             "offset": np.array([m[2] for _, m in kept], dtype=np.int64),
             "size": np.array([m[3] for _, m in kept], dtype=np.int64),
             "labels": np.array([m[1] for _, m in kept], dtype=np.int64),
             "names": np.array([m[0].encode("utf-8") for _, m in kept], dtype=np.bytes_)}
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
    }
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


def stage_folder(source: str, dest: str, shard_size_mb: float = 256, workers: int = 1,
                 max_bad_fraction: float = 0.01, seed: int = 0,
                 progress: Progress = _print_progress) -> dict[str, Any]:
    check_dest_outside(source, dest)
    listings = _split_listings(source, dest, workers)
    classes = sorted({path.split("/", 1)[0] for listing in listings.values() for path in listing.names})
    if not classes:
        raise UserError(f"no images in class folders under {source}; expected <class>/<image>.jpg files "
                        "(in a folder or a .tar) or a folder of per-class .tar files")
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
    manifest = {
        "format": STAGED_FORMAT,
        "complete": True,
        "source": source,
        "classes": classes,
        "splits": splits,
        "skipped": skipped,
        "ignored": {"count": len(ignored), "paths": ignored[:MAX_IGNORED_LISTED],
                    "not_regular": dict(list(not_regular.items())[:MAX_IGNORED_LISTED])},
        "options": {"shard_size_mb": shard_size_mb, "seed": seed, "max_bad_fraction": max_bad_fraction},
    }
    storage.write_text(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False))
    counts = ", ".join(f"{split} {info['count']}" for split, info in splits.items())
    progress(f"stage: wrote {storage.join(dest, MANIFEST)}: {len(classes)} classes, {counts} images, "
             f"{len(skipped)} skipped, {len(ignored)} non-image or special files ignored")
    return manifest


def stage_dataset(source: str, dest: str, shard_size_mb: float = 256, workers: int | None = None,
                  max_bad_fraction: float = 0.01, seed: int = 0, num_classes: int = 10,
                  images_per_class: int = 60, val_images_per_class: int | None = None, image_size: int = 64,
                  progress: Progress = _print_progress) -> dict[str, Any]:
    """Stage `source` (an ImageFolder URL or a generated `builtin:<kind>`) into `dest`; returns the manifest."""
    if not shard_size_mb > 0:
        raise UserError(f"--shard_size_mb must be positive, not {shard_size_mb}")
    if not 0 <= max_bad_fraction <= 1:
        raise UserError(f"--max_bad_fraction is a fraction between 0 and 1, not {max_bad_fraction}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} is out of range; use 1 or more, or leave it out for one per CPU "
                        "(at most 8)")
    if seed < 0:
        raise UserError(f"--seed {seed} is out of range; use 0 or more")
    workers = workers or min(8, os.cpu_count() or 1)
    if not source.startswith(BUILTIN_PREFIX):
        return stage_folder(source, dest, shard_size_mb, workers, max_bad_fraction, seed, progress)
    counts = {"num_classes": num_classes, "images_per_class": images_per_class,
              "val_images_per_class": val_images_per_class, "image_size": image_size}
    for name, value in counts.items():
        if value is not None and value < BUILTIN_MINIMUMS[name]:
            raise UserError(f"--{name} {value} is out of range for {source}; use {BUILTIN_MINIMUMS[name]} or more")
    kind = source.removeprefix(BUILTIN_PREFIX)
    generated = tempfile.mkdtemp(prefix=f"unmix-{kind}-")
    try:
        val_count = images_per_class // 3 if val_images_per_class is None else val_images_per_class
        make_generated(kind, generated, num_classes, images_per_class, val_count, image_size, seed, progress)
        manifest = stage_folder(generated, dest, shard_size_mb, workers, max_bad_fraction, seed, progress)
    finally:
        shutil.rmtree(generated, ignore_errors=True)
    manifest["source"] = source
    storage.write_text(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help=f"ImageFolder tree (or a folder holding train/ and val/), a plain .tar of "
                             f"either, or a folder of per-class .tar files (ImageNet's), local or s3://; "
                             f"or {' or '.join(BUILTIN_SOURCES)} to generate a small labelled dataset")
    parser.add_argument("--dest", required=True, help="where to write shards and manifest.json (any fsspec URL)")
    parser.add_argument("--shard_size_mb", type=float, default=256, help="target size of one tar shard")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs, max 8)")
    parser.add_argument("--max_bad_fraction", type=float, default=0.01,
                        help="fail instead of staging when more than this fraction of files is undecodable")
    parser.add_argument("--seed", type=int, default=0, help="shuffle of samples across shards; generated images' seed")
    shapes = parser.add_argument_group(f"{', '.join(BUILTIN_SOURCES)} options")
    shapes.add_argument("--num_classes", type=int, default=10)
    shapes.add_argument("--images_per_class", type=int, default=60, help="training images per class")
    shapes.add_argument("--val_images_per_class", type=int, default=None, help="default: a third of the above")
    shapes.add_argument("--image_size", type=int, default=64)


def run(args: argparse.Namespace) -> None:
    stage_dataset(args.source, args.dest, shard_size_mb=args.shard_size_mb, workers=args.workers,
                  max_bad_fraction=args.max_bad_fraction, seed=args.seed, num_classes=args.num_classes,
                  images_per_class=args.images_per_class, val_images_per_class=args.val_images_per_class,
                  image_size=args.image_size)
