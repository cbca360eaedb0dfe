"""Image sources, the front door of trainer/data: what the rest of the trainer, the tests and the benchmarks import.

`open_source(url, split)` opens any supported data URL as an `ImageSource` (docs/architecture.md); `probe(url)`
says what a URL holds without opening it. Below it: names.py (names and split rules) <- decode, archives,
shard_fetch, streaming <- layout.py (the probe) <- the readers (readers.py: ImageFolder trees and staged data,
wds.py: WebDataset shard sets) <- this module; staging.py (and shard_writer.py, its writing conventions) writes.
"""

from __future__ import annotations

import logging

from trainer import storage
from trainer.data.layout import KINDS, Layout, probe
from trainer.data.names import MANIFEST, SPLITS, is_ignored_name, printable_name
from trainer.data.readers import (
    FolderSource,
    ImageSource,
    ShardedSource,
    StagedSource,
    loader_timeout,
    open_folder,
    open_staged,
    read_manifest,
)
from trainer.data.wds import WebDatasetSource, open_webdataset

__all__ = ["KINDS", "MANIFEST", "SPLITS", "FolderSource", "ImageSource", "Layout", "ShardedSource", "StagedSource",
           "WebDatasetSource", "is_ignored_name", "loader_timeout", "open_source", "printable_name", "probe",
           "read_manifest"]

log = logging.getLogger(__name__)


def open_source(url: str, split: str | None = None, cache_dir: str | None = None) -> ImageSource:
    """A staged dataset (folder with manifest.json), WebDataset shards (a folder of them, a brace pattern, a
    wids index, one .tar) or an ImageFolder tree, local or on any fsspec store.

    `split` picks train/ or val/ (default train) when the data holds both; `cache_dir` (or the
    UNMIX_SHARD_CACHE env) says where whole shards are kept on local disk (trainer/data/streaming.py: on remote
    storage they are by default, in a temp folder); the read path is logged.
    """
    source = _open(probe(url), split, cache_dir)
    if isinstance(source, ShardedSource):
        how = source.read_path.describe()
    else:
        how = ("one request per file: an ImageFolder tree on remote storage (stage it for whole-shard reads)"
               if not storage.is_local(source.url) else "one file per sample from a local folder")
    log.info("reading %s: %s", printable_name(source.url), how)
    return source


def _open(layout: Layout, split: str | None, cache_dir: str | None) -> ImageSource:
    if layout.kind in ("shards", "tar", "tar-folders"):
        return open_webdataset(layout.url, split, cache_dir)
    if layout.kind == "staged":
        return open_staged(layout.url, split, cache_dir)
    return open_folder(layout.folder(split))
