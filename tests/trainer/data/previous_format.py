"""A dataset in the layout `stage` wrote before WebDataset shards (format unmix-swav-staged/1), made from a
staged one: tar members named by their source path (`<class>/<file>`), labels only in index.npz, no
classes.txt or wids index. Used by the tests (it keeps loading) and by benchmarks/bench_data.py (old vs new)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np

from trainer import storage
from trainer.data.readers import read_index, read_manifest

PREVIOUS_FORMAT = "unmix-swav-staged/1"


def write_previous_format(staged: str, dest: str) -> dict:
    """Rewrite the staged dataset at `staged` into `dest` in format 1; returns the new manifest."""
    manifest = read_manifest(staged)
    splits = {}
    for split, info in manifest["splits"].items():
        index = read_index(staged, info)
        shards, offsets = [], np.zeros(len(index["names"]), dtype=np.int64)
        for number, shard in enumerate(info["shards"]):
            data = storage.read_bytes(storage.join(staged, shard["path"]))
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for i in np.flatnonzero(index["shard"] == number):
                    start, size = int(index["offset"][i]), int(index["size"][i])
                    member = tarfile.TarInfo(index["names"][i].decode("utf-8"))
                    member.size, member.mtime, member.mode = size, 0, 0o644
                    tar.addfile(member, io.BytesIO(data[start:start + size]))
                    offsets[i] = tar.offset - tarfile.BLOCKSIZE * -(-size // tarfile.BLOCKSIZE)
            shard_bytes = buffer.getvalue()
            storage.atomic_write_bytes(storage.join(dest, shard["path"]), shard_bytes)
            shards.append({"path": shard["path"], "size": len(shard_bytes),
                           "sha256": hashlib.sha256(shard_bytes).hexdigest(), "count": shard["count"]})
        arrays = {"shard": index["shard"], "offset": offsets, "size": index["size"], "labels": index["labels"],
                  "names": index["names"]}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        storage.atomic_write_bytes(storage.join(dest, info["index"]), buffer.getvalue())
        splits[split] = {key: info[key] for key in ("count", "class_counts", "modes", "index")}
        splits[split].update(index_sha256=hashlib.sha256(buffer.getvalue()).hexdigest(), shards=shards)
    old = {"format": PREVIOUS_FORMAT, "complete": True, "source": manifest["source"], "classes": manifest["classes"],
           "splits": splits, "skipped": manifest["skipped"], "ignored": manifest["ignored"],
           "options": manifest["options"]}
    storage.write_text(storage.join(dest, "manifest.json"), json.dumps(old, indent=1))
    return old
