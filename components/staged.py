"""Staged data that outlive a run: a location derived from the source and the staging options, reused when
its manifest checks out.

`stage_images` puts a dataset at `<storage_root>/staged/images-<name>-<hash of source + options>`. A second
run with the same source and options finds the manifest there, verifies it (format, completeness, the
same source, the index checksums, every shard at its recorded size: a few listings, seconds) and reuses
the dataset without listing or decoding the source again; a dataset named by the pipeline parameter
`staged_data` is verified the same way and staging is skipped. (The trainer's `stage` reuses a complete
--dest by itself too, after listing the source again; this skips even that listing, so a source changed
in place under the same URL is not noticed: stage it with other options or delete the staged copy.)
Generated detection data are kept the same way, under a marker written after the last file.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from typing import Any

from components.runtime import check_storage_root, run_step, run_trainer
from trainer import storage
from trainer.data.sources import read_manifest
from trainer.errors import UserError

STAGED_FOLDER = "staged"
DETECTION_MARKER = "generated.json"
BUILTIN_DETECTION = "builtin:shapes-coco"


def _say(message: str) -> None:
    print(f"[stage] {message}", file=sys.stderr, flush=True)


def staged_location(storage_root: str, kind: str, source: str, options: Any) -> str:
    """`<root>/staged/<kind>-<readable name>-<12 hex of sha256(source, options)>`."""
    identity = json.dumps({"source": source, "options": options}, sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:12]
    name = re.sub(r"[^a-z0-9]+", "-", source.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")[:40] or "data"
    return storage.join(storage_root, STAGED_FOLDER, f"{kind}-{name}-{digest}")


def verify_staged(url: str, source: str | None = None) -> dict[str, Any]:
    """The manifest of the staged dataset at `url` after the trainer's own check that it is whole (index
    checksums, every shard's size: a few listings); UserError if not."""
    from trainer.data.staging import verify_staged as verify_against

    if not storage.exists(storage.join(url, "manifest.json")):
        raise UserError(f"{url} holds no manifest.json, so it is no staged dataset; stage it with unmix-swav stage "
                        "(or leave staged_data empty)")
    manifest = read_manifest(url)
    if source is not None and manifest.get("source") != source:
        raise UserError(f"{url} holds a dataset staged from {manifest.get('source')!r}, not {source!r}")
    verify_against(url, manifest)
    return manifest


def stage_images(storage_root: str, source: str, stage_args: list[str], staged_data: str = "") -> str:
    """The URL of the staged image dataset: `staged_data` after verifying it, else the derived location,
    reused when it verifies, staged (by `unmix-swav stage`) when it does not exist yet."""
    started = time.monotonic()
    if staged_data:
        verify_staged(staged_data)
        _say(f"using staged_data {staged_data}: manifest verified in {time.monotonic() - started:.1f}s, "
             "staging skipped")
        return staged_data
    dest = staged_location(storage_root, "images", source, [str(arg) for arg in stage_args])
    if storage.exists(storage.join(dest, "manifest.json")):
        try:
            verify_staged(dest, source)
            _say(f"reusing {dest} (staged earlier from {source} with the same options): manifest verified in "
                 f"{time.monotonic() - started:.1f}s")
            return dest
        except UserError as error:
            _say(f"not reusing {dest}: {error}; staging again (finished shards are kept)")
    run_trainer("stage", ["--source", source, "--dest", dest, *map(str, stage_args)])
    _say(f"staged {source} into {dest} in {time.monotonic() - started:.1f}s")
    return dest


def stage_detection(storage_root: str, source: str, options: dict[str, Any]) -> str:
    """A detection dataset URL: a real one as given; the generated one at a location derived from its options,
    generated once and reused."""
    if source != BUILTIN_DETECTION:
        return source
    from trainer.detr.synthetic_coco import make_shapes_coco

    started = time.monotonic()
    dest = staged_location(storage_root, "detection", source, options)
    marker = storage.join(dest, DETECTION_MARKER)
    wanted = {"source": source, "options": options}
    if storage.exists(marker) and json.loads(storage.read_text(marker)) == wanted:
        _say(f"reusing {dest} (generated earlier with the same options) in {time.monotonic() - started:.1f}s")
        return dest
    make_shapes_coco(dest, **options)
    storage.write_text(marker, json.dumps(wanted, sort_keys=True))  # last: its presence means complete
    _say(f"generated {source} into {dest} in {time.monotonic() - started:.1f}s")
    return dest


def stage_step(storage_root: str, data_source: str, detection_source: str, staged_data: str, stage_args: list[str],
               detection_options: dict[str, Any]) -> tuple[str, str]:
    """The stage step (the first to use storage_root and staged_data): (images URL, detection URL), behind the
    trainer's error boundary, so that a bad value ends it with one line and its exit code, not a traceback."""
    def _stage() -> tuple[str, str]:
        check_storage_root(storage_root)
        return (stage_images(storage_root, data_source, stage_args, staged_data),
                stage_detection(storage_root, detection_source, detection_options))

    return run_step(_stage)
