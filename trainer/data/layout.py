"""What one data URL holds, told once: `probe(url) -> Layout`. Reading (trainer/data/open.py: `open_source`),
staging (trainer/data/staging.py) and the data preflight all ask it, so they cannot disagree about a URL.

The probe looks at names and one folder listing (two with split folders of tars); it reads no archive. What a
.tar holds (WebDataset samples, a tar of class folders, one class of ImageNet's per-class tars) is told from
its members by trainer/data/wds.py (`tar_kind`, `tar_layout`), which reading and staging both call.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from trainer import storage
from trainer.data.archives import is_tar_name
from trainer.data.names import MANIFEST, SPLIT_FOLDERS, folder_split, is_ignored_name, printable_name
from trainer.errors import UserError

# kind -> what it is
KINDS = {
    "staged": "a staged dataset (a folder with manifest.json and tar shards)",
    "shards": "WebDataset shards named by a brace pattern or a wids index (.json)",
    "tar": "one .tar: a WebDataset shard or a tar of an ImageFolder tree (told by its members)",
    "tar-folders": "a folder of .tar files, or its train/ and val/ folders of them: WebDataset shards or "
                   "ImageNet's per-class tars (told by their members)",
    "imagefolder": "an ImageFolder tree (<class>/<image>), or a folder holding train/ and val/ (or validation/) ones",
    "file": "a file that is none of these",
    "missing": "nothing at the URL",
}


@dataclass(frozen=True)
class Layout:
    """`url` (no trailing slash, no /manifest.json) is of `kind` (one of KINDS). For a folder (imagefolder,
    tar-folders): `splits`, split -> its folder (train/ and val/ or validation/ when it holds them, else
    {"train": url}), and `tar_groups`, folder -> the .tar files directly in it (tar-folders)."""

    url: str
    kind: str
    tar_groups: dict[str, list[str]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)

    def folder(self, split: str | None) -> str:
        """The ImageFolder root of `split` (default train); a missing split is refused naming what there is."""
        if self.kind != "imagefolder":
            raise UserError(f"data path {self.url} does not exist or is not a folder; pass an ImageFolder tree, a "
                            "folder holding train/ and val/, or a staged dataset (folder with manifest.json)")
        if self.splits != {"train": self.url}:
            chosen = split or "train"
            if chosen not in self.splits:
                names = ", ".join(sorted(posixpath.basename(folder) for folder in self.splits.values()))
                raise UserError(f"{self.url} has no {chosen}/ folder (it has {names})")
            return self.splits[chosen]
        if split not in (None, "train"):
            raise UserError(f"{self.url} is a single ImageFolder tree without a {split}/ folder; pass the folder "
                            f"that holds {split}/, or a separate URL for the {split} data")
        return self.url


def is_brace_pattern(url: str) -> bool:
    return re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", url) is not None


def is_wids_index(url: str) -> bool:
    return url.lower().endswith(".json") and not url.rstrip("/").endswith("/" + MANIFEST)


def _entries(url: str) -> tuple[list[str], dict[str, str]]:
    """(top-level .tar URLs, split -> URL of its split folder) of the folder `url`; a split named by two
    folders (val/ and validation/) is refused."""
    fs, root = storage.filesystem(url)
    entries = storage.with_retries(lambda: fs.ls(root, detail=True), f"listing {printable_name(url)}")
    tars: list[str] = []
    splits: dict[str, str] = {}
    for entry in sorted(entries, key=lambda e: e["name"]):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry["type"] == "directory" and name in SPLIT_FOLDERS:
            split = folder_split(name)
            if split in splits:
                raise UserError(f"{printable_name(url)} holds both {posixpath.basename(splits[split])}/ and {name}/ "
                                f"for the {split} split; keep one of them")
            splits[split] = storage.join(url, name)
        elif entry["type"] == "file" and is_tar_name(name) and not is_ignored_name(name):
            tars.append(storage.join(url, name))
    return tars, splits


def folder_tar_groups(url: str) -> dict[str, list[str]]:
    """Folder (`url` or its split folders) -> the .tar files directly in it; {} when it holds none. With split
    folders, only theirs count (an ImageFolder's train/ holds class folders, not tars)."""
    return _tar_groups(url, *_entries(url))


def _tar_groups(url: str, tars: list[str], splits: dict[str, str]) -> dict[str, list[str]]:
    if not splits:
        return {url: tars} if tars else {}
    groups = {folder: _entries(folder)[0] for folder in splits.values()}
    return {folder: found for folder, found in groups.items() if found}


def probe(url: str) -> Layout:
    """What `url` holds (see KINDS). Names decide first: a brace pattern or wids index is `shards`, a .tar name
    is `tar` (whether or not it exists: its reader says what is wrong); then a manifest.json makes it `staged`."""
    url = url.rstrip("/")
    if url.endswith("/" + MANIFEST):
        url = url[: -len(MANIFEST) - 1]
    if is_brace_pattern(url) or is_wids_index(url):
        return Layout(url, "shards")
    if is_tar_name(url):
        return Layout(url, "tar")
    if storage.exists(storage.join(url, MANIFEST)):
        return Layout(url, "staged")
    fs, root = storage.filesystem(url)
    if storage.with_retries(lambda: fs.isdir(root), f"checking {url}"):
        tars, splits = _entries(url)
        groups = _tar_groups(url, tars, splits)
        return Layout(url, "tar-folders" if groups else "imagefolder", groups, splits or {"train": url})
    if storage.with_retries(lambda: fs.isfile(root), f"checking {url}"):
        return Layout(url, "file")
    return Layout(url, "missing")
