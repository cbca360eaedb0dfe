"""How staged shards are written (the writing conventions; reading them is trainer/data/readers.py's and
wds.py's): which samples go in which shard, each sample's WebDataset key, and one shard packed as
`<key>.<ext>` (the original bytes), `<key>.cls` (the class index) and `<key>.json`, uploaded with its record.
trainer/data/staging.py plans a split and runs `write_shard` in worker processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import tarfile
from collections import Counter
from typing import Any

import numpy as np

from trainer import env, storage
from trainer.data.archives import read_members
from trainer.data.decode import BadImage, decode, open_image_bytes

READ_BATCH = 32  # files fetched concurrently by one worker (s3fs issues the GETs in parallel)
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _safe_key(text: str) -> str:
    key = _KEY_UNSAFE.sub("_", text) or "_"
    return "k" + key if key.startswith("__") else key  # `__x__` would be taken for a meta member


def sample_keys(names: list[str]) -> list[str]:
    """A WebDataset key per sample: unique, no dot, no slash, ASCII letters, digits, `_` and `-` only.

    The file's stem when that is unique (`n01440764/n01440764_10026.JPEG` -> `n01440764_10026`), else its
    folders and stem (`cats/001.jpg` -> `cats_001`), else that and the sample's position in `names`.
    """
    keys = [_safe_key(posixpath.splitext(posixpath.basename(name))[0]) for name in names]
    counts = Counter(keys)
    keys = [_safe_key(posixpath.splitext(name)[0].replace("/", "_")) if counts[key] > 1 else key
            for key, name in zip(keys, names, strict=True)]
    while len(set(keys)) < len(keys):
        counts = Counter(keys)
        keys = [f"{key}_{number}" if counts[key] > 1 else key for number, key in enumerate(keys)]
    return keys


def image_suffix(name: str) -> str:
    """The suffix a staged image member gets: the file's extension, lower-cased (`.JPEG` -> `jpeg`), so that
    webdataset (which lower-cases) and wids (which does not) both see the same one."""
    return posixpath.splitext(name)[1][1:].lower()


def sample_json(name: str, label: int, class_name: str, split: str) -> bytes:
    return json.dumps({"filename": name, "label": label, "class_name": class_name, "split": split},
                      ensure_ascii=False).encode("utf-8")


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


def plan_digest(members: list[Any]) -> str:
    return hashlib.sha256(json.dumps(members, ensure_ascii=False).encode("utf-8")).hexdigest()


def _fetch(source_url: str, relative_paths: list[str]) -> dict[str, bytes | Exception]:
    fs, root = storage.filesystem(source_url)
    full = [f"{root.rstrip('/')}/{p}" for p in relative_paths]
    found = storage.with_retries(lambda: fs.cat(full, on_error="return"), f"reading files under {source_url}")
    return {p: found.get(f, FileNotFoundError(f)) for p, f in zip(relative_paths, full, strict=True)}


def _validate(data: bytes | Exception, max_pixels: int) -> str:
    """The image's original mode when it decodes with the trainer's decoder; BadImage otherwise."""
    if isinstance(data, Exception):
        raise BadImage(f"could not be read ({type(data).__name__}: {data})")
    mode = open_image_bytes(data, max_pixels).mode
    decode(data, max_pixels)
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


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one member; returns the offset of its data in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - tarfile.BLOCKSIZE * -(-len(data) // tarfile.BLOCKSIZE)


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Validate and pack one shard's files; upload the tar, then its record. Runs in a worker process.

    Members are [path, label] (files under task["source"]) or [path, label, archive number, member path,
    offset, size] (members of task["archives"]); task["keys"] holds each one's WebDataset key. Each sample
    becomes `<key>.<ext>` (the original bytes), `<key>.cls` (the class index) and `<key>.json`.
    """
    members: list[list[Any]] = task["members"]
    classes: list[str] = task["classes"]
    buffer = io.BytesIO()
    packed, skipped, modes = [], [], Counter()
    max_pixels = env.current().max_image_pixels  # read once: _validate runs per file
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for start in range(0, len(members), READ_BATCH):
            chunk = members[start:start + READ_BATCH]
            contents = _fetch_members(task, chunk)
            for member, key in zip(chunk, task["keys"][start:start + READ_BATCH], strict=True):
                path, label = member[0], member[1]
                data = contents[path]
                try:
                    modes[_validate(data, max_pixels)] += 1
                except BadImage as error:
                    skipped.append(_skip_entry(task, member, str(error)))
                    continue
                assert isinstance(data, bytes)
                data_offset = _add_member(tar, f"{key}.{image_suffix(path)}", data)
                _add_member(tar, f"{key}.cls", str(label).encode("ascii"))
                _add_member(tar, f"{key}.json", sample_json(path, label, classes[label], task["split"]))
                packed.append([path, label, data_offset, len(data), key])
    shard_bytes = buffer.getvalue()
    storage.atomic_write_bytes(storage.join(task["dest"], task["path"]), shard_bytes)
    record = {"plan": task["plan"], "path": task["path"], "size": len(shard_bytes),
              "sha256": hashlib.sha256(shard_bytes).hexdigest(), "members": packed, "skipped": skipped,
              "modes": dict(modes)}
    storage.write_verified(storage.join(task["dest"], task["record"]), json.dumps(record, ensure_ascii=False))
    return record


def reusable_record(task: dict[str, Any]) -> dict[str, Any] | None:
    """The shard's record from an earlier run, if it verifies, matches this plan and its tar is complete."""
    record_url = storage.join(task["dest"], task["record"])
    if not storage.exists(storage.digest_url(record_url)):  # none, or written before digests: stage it again
        return None
    try:
        record = json.loads(storage.read_verified(record_url))
    except (ValueError, FileNotFoundError, storage.IntegrityError):
        return None
    fs, tar_path = storage.filesystem(storage.join(task["dest"], task["path"]))
    if record.get("plan") != task["plan"] or not fs.exists(tar_path) or fs.size(tar_path) != record["size"]:
        return None
    return record
