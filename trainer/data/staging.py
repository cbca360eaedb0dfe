"""`unmix-swav stage`: validate every image of an ImageFolder tree and pack it into tar shards + manifest.

Layout written under --dest (any fsspec URL):
  <split>/shard-00000.tar   original image bytes, members named by their path in the source
  <split>/shard-00000.json  what went into the shard (offsets, sizes, labels, skipped files): resume record
  <split>/index.npz         per sample: shard, offset, size, label, name (what StagedSource reads)
  manifest.json             classes, per-split counts and shards with sha256, skipped files and reasons
The manifest is written last, so its presence means a complete dataset. Samples are shuffled across
shards (fixed seed) so that every shard holds a mix of classes: the sampler reads shard by shard.
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
from typing import Any

import numpy as np

from trainer import storage
from trainer.data.decode import BadImage, decode, open_image_bytes
from trainer.data.sources import MANIFEST, SPLITS, STAGED_FORMAT, list_folder
from trainer.data.synthetic import make_shapes
from trainer.errors import UserError

BUILTIN_SHAPES = "builtin:shapes"
READ_BATCH = 32  # files fetched concurrently by one worker (s3fs issues the GETs in parallel)
MAX_IGNORED_LISTED = 1000
Progress = Callable[[str], None]


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


def _plan_digest(members: list[tuple[str, int]]) -> str:
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


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Validate and pack one shard's files; upload the tar, then its record. Runs in a worker process."""
    members: list[tuple[str, int]] = task["members"]
    buffer = io.BytesIO()
    packed, skipped, modes = [], [], Counter()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for start in range(0, len(members), READ_BATCH):
            chunk = members[start:start + READ_BATCH]
            contents = _fetch(task["source"], [path for path, _ in chunk])
            for path, label in chunk:
                data = contents[path]
                try:
                    modes[_validate(data)] += 1
                except BadImage as error:
                    skipped.append([path, str(error)])
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


def _split_roots(source: str) -> dict[str, str]:
    """Split name -> ImageFolder root: train/ and val/ when the source holds them, else the source as train."""
    fs, root = storage.filesystem(source)
    if not fs.isdir(root):
        raise UserError(f"--source {source} does not exist or is not a folder; pass an ImageFolder tree "
                        f"(class folders), a folder holding train/ and val/, or {BUILTIN_SHAPES}")
    if fs.exists(f"{root.rstrip('/')}/{MANIFEST}"):
        raise UserError(f"--source {source} is already a staged dataset; pass it as --data_path directly")
    names = {os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    present = [split for split in SPLITS if split in names]
    return {split: storage.join(source, split) for split in present} or {"train": source}


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


def _stage_split(split: str, root: str, listing: tuple[list[str], list[int], list[str]], classes: list[str],
                 dest: str, shard_bytes: int, workers: int, seed: int,
                 progress: Progress) -> tuple[dict[str, Any], list[dict[str, str]]]:
    images, sizes, _ = listing
    label_of = {name: label for label, name in enumerate(classes)}
    members = [(path, label_of[path.split("/", 1)[0]]) for path in images]
    tasks = []
    for number, indices in enumerate(plan_shards(sizes, shard_bytes, seed)):
        shard_members = [members[i] for i in indices]
        tasks.append({"source": root, "dest": dest, "members": shard_members, "plan": _plan_digest(shard_members),
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
    skipped = [{"split": split, "path": path, "reason": reason} for r in records for path, reason in r["skipped"]]
    return info, skipped


def stage_folder(source: str, dest: str, shard_size_mb: float = 256, workers: int = 1,
                 max_bad_fraction: float = 0.01, seed: int = 0,
                 progress: Progress = _print_progress) -> dict[str, Any]:
    roots = _split_roots(source)
    listings = {split: list_folder(root) for split, root in roots.items()}
    classes = sorted({path.split("/", 1)[0] for images, _, _ in listings.values() for path in images})
    if not classes:
        raise UserError(f"no images in class folders under {source}; expected <class>/<image>.jpg files")
    ignored = [storage.join(split, path) for split, (_, _, paths) in listings.items() for path in paths]
    total = sum(len(images) for images, _, _ in listings.values())

    splits, skipped = {}, []
    for split, root in roots.items():
        splits[split], split_skipped = _stage_split(split, root, listings[split], classes, dest,
                                                    int(shard_size_mb * 2**20), workers, seed, progress)
        skipped += split_skipped
    bad_fraction = len(skipped) / max(total, 1)
    report = {"source": source, "images": total, "skipped": skipped, "bad_fraction": bad_fraction}
    if bad_fraction > max_bad_fraction:
        storage.write_text(storage.join(dest, "staging-report.json"), json.dumps(report, indent=1))
        first = "; ".join(f"{s['split']}/{s['path']}: {s['reason']}" for s in skipped[:3])
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
        "ignored": {"count": len(ignored), "paths": ignored[:MAX_IGNORED_LISTED]},
        "options": {"shard_size_mb": shard_size_mb, "seed": seed, "max_bad_fraction": max_bad_fraction},
    }
    storage.write_text(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False))
    counts = ", ".join(f"{split} {info['count']}" for split, info in splits.items())
    progress(f"stage: wrote {storage.join(dest, MANIFEST)}: {len(classes)} classes, {counts} images, "
             f"{len(skipped)} skipped, {len(ignored)} non-image files ignored")
    return manifest


def stage_dataset(source: str, dest: str, shard_size_mb: float = 256, workers: int | None = None,
                  max_bad_fraction: float = 0.01, seed: int = 0, num_classes: int = 10,
                  images_per_class: int = 60, val_images_per_class: int | None = None, image_size: int = 64,
                  progress: Progress = _print_progress) -> dict[str, Any]:
    """Stage `source` (an ImageFolder URL or `builtin:shapes`) into `dest`; returns the manifest."""
    if shard_size_mb <= 0:
        raise UserError(f"--shard_size_mb must be positive, not {shard_size_mb}")
    if not 0 <= max_bad_fraction <= 1:
        raise UserError(f"--max_bad_fraction is a fraction between 0 and 1, not {max_bad_fraction}")
    workers = workers or min(8, os.cpu_count() or 1)
    if source != BUILTIN_SHAPES:
        return stage_folder(source, dest, shard_size_mb, workers, max_bad_fraction, seed, progress)
    generated = tempfile.mkdtemp(prefix="unmix-shapes-")
    try:
        val_count = images_per_class // 3 if val_images_per_class is None else val_images_per_class
        make_shapes(generated, num_classes, images_per_class, val_count, image_size, seed, progress)
        manifest = stage_folder(generated, dest, shard_size_mb, workers, max_bad_fraction, seed, progress)
    finally:
        shutil.rmtree(generated, ignore_errors=True)
    manifest["source"] = BUILTIN_SHAPES
    storage.write_text(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help=f"ImageFolder tree (or a folder holding train/ and val/), local or s3://; "
                             f"or {BUILTIN_SHAPES} to generate the synthetic dataset")
    parser.add_argument("--dest", required=True, help="where to write shards and manifest.json (any fsspec URL)")
    parser.add_argument("--shard_size_mb", type=float, default=256, help="target size of one tar shard")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs, max 8)")
    parser.add_argument("--max_bad_fraction", type=float, default=0.01,
                        help="fail instead of staging when more than this fraction of files is undecodable")
    parser.add_argument("--seed", type=int, default=0, help="shuffle of samples across shards; shapes seed")
    shapes = parser.add_argument_group(f"{BUILTIN_SHAPES} options")
    shapes.add_argument("--num_classes", type=int, default=10)
    shapes.add_argument("--images_per_class", type=int, default=60, help="training images per class")
    shapes.add_argument("--val_images_per_class", type=int, default=None, help="default: a third of the above")
    shapes.add_argument("--image_size", type=int, default=64)


def run(args: argparse.Namespace) -> None:
    stage_dataset(args.source, args.dest, shard_size_mb=args.shard_size_mb, workers=args.workers,
                  max_bad_fraction=args.max_bad_fraction, seed=args.seed, num_classes=args.num_classes,
                  images_per_class=args.images_per_class, val_images_per_class=args.val_images_per_class,
                  image_size=args.image_size)
