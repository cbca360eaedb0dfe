"""What one data URL holds, told once: `probe(url) -> Layout`. Reading (trainer/data/open.py: `open_source`),
staging (trainer/data/staging.py) and the data preflight all ask it, so they cannot disagree about a URL.

The probe looks at names and one folder listing (two with split folders of tars); it reads no archive. What
tars hold (labelled WebDataset shards, a tar of class folders or ImageNet's tar of per-class tars, per-class
tars) is told from their members, never from names: `tar_contents` (staging) and `tar_layout` (reading a shard
set, trainer/data/wds.py) both rest on `tar_kind` here.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field

from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix

from trainer import storage
from trainer.data.archives import LABEL_SUFFIXES, TAR_SUFFIX, Member, index_all, is_tar_name
from trainer.data.names import (
    MANIFEST,
    SPLIT_FOLDERS,
    folder_split,
    is_ignored_name,
    is_image_name,
    printable_name,
)
from trainer.errors import UserError

SUPPORTED_LAYOUTS = ("supported: an ImageFolder tree (<class>/<image>) or a .tar of one, ImageNet's per-class tars "
                     "(<class>.tar of images) or its tar of them, a staged dataset (manifest.json), or WebDataset "
                     "shards (<key>.jpg with <key>.cls or <key>.json labels: a folder, a brace pattern or a wids "
                     "index .json)")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own `skip_meta` default
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
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


# --- what tars hold, from their members ----------------------------------------------------------------------


def split_member(path: str) -> tuple[str, str] | None:
    """(key, suffix) of a member as webdataset groups it (suffix lower-cased, as its reader does); None for the
    members webdataset skips (`__...__` meta files) or cannot name (no dot, a hidden basename)."""
    if ("/" not in path and path.startswith(meta_prefix) and path.endswith(meta_suffix)) or _META.match(path):
        return None
    key, suffix = base_plus_ext(path)
    return None if key is None else (key, suffix.lower())


def member_groups(members: list[Member]) -> list[tuple[str, list[tuple[str, Member]]]]:
    """Members grouped as webdataset groups them: consecutive members with one key."""
    groups: list[tuple[str, list[tuple[str, Member]]]] = []
    for member in members:
        parts = split_member(member.path)
        if parts is None:
            continue
        key, suffix = parts
        if groups and groups[-1][0] == key:
            groups[-1][1].append((suffix, member))
        else:
            groups.append((key, [(suffix, member)]))
    return groups


def is_image_suffix(suffix: str) -> bool:
    return "." not in suffix and is_image_name("x." + suffix)


def tar_kind(url: str, members: list[Member]) -> str:
    """What one tar holds, from its members: "webdataset" (images with .cls/.json labels by key),
    "webdataset-unlabelled" (images grouped with other members, no labels), "tar-of-tars" (ImageNet's
    train tar), "imagefolder" (images in two or more class folders), "class" (images of one class), "empty"."""
    images = [m.path for m in members if is_image_name(m.path) and not is_ignored_name(m.path)]
    if not images:
        return "empty"
    grouped = [[suffix for suffix, _ in group] for _, group in member_groups(members)]
    with_images = [suffixes for suffixes in grouped if any(is_image_suffix(s) for s in suffixes)]
    if any(set(suffixes) & set(LABEL_SUFFIXES) for suffixes in with_images):
        return "webdataset"
    if any(len(suffixes) > 1 for suffixes in with_images):
        return "webdataset-unlabelled"
    tops = {path.split("/", 1)[0] for path in images if "/" in path}
    if any(is_tar_name(top) for top in tops):
        return "tar-of-tars"
    stem = posixpath.basename(url).removesuffix(TAR_SUFFIX)
    return "imagefolder" if len(tops - {stem}) >= 2 else "class"


def _numbered(urls: list[str]) -> bool:
    """Names like shard-0000.tar, shard-0001.tar: one prefix and consecutive numbers (ImageNet's class tars,
    n01440764.tar..., share a prefix but not consecutive numbers)."""
    matches = [_NUMBERED.match(posixpath.basename(url).removesuffix(TAR_SUFFIX)) for url in urls]
    if len(urls) < 2 or not all(matches):
        return False
    numbers = sorted(int(m.group(2)) for m in matches if m)
    return len({m.group(1) for m in matches if m}) == 1 and numbers[-1] - numbers[0] == len(numbers) - 1


def tar_layout(where: str, urls: list[str], indexed: list[tuple[str, list[Member]]]) -> str:
    """"webdataset" or "class" (per-class tars) for a set of tars; anything else is refused in one line."""
    kinds = [tar_kind(url, members) for url, (_, members) in zip(urls, indexed, strict=True)]
    counts = Counter(kinds)
    if set(counts) == {"webdataset"}:
        return "webdataset"
    if set(counts) == {"class"} and not _numbered(urls):
        return "class"
    names = {kind: posixpath.basename(url) for url, kind in zip(urls, kinds, strict=True)}
    found = ", ".join(f"{count} {kind} ({names[kind]})" for kind, count in counts.most_common())
    if set(counts) == {"class"}:
        hint = ("numbered tars of unlabelled images: per-class tars are named by their class, and WebDataset "
                "shards need <key>.cls or <key>.json labels")
    elif set(counts) == {"webdataset-unlabelled"}:
        hint = "WebDataset shards without labels: add a <key>.cls (class index) or <key>.json with \"label\""
    elif set(counts) <= {"imagefolder", "tar-of-tars"} and len(urls) == 1:
        hint = f"pass the tar itself as --source: unmix-swav stage --source {urls[0]} --dest ..."
    else:
        hint = "the tars do not share one layout"
    raise UserError(f"{where}: cannot tell what its tars hold: {found}; {hint}; {SUPPORTED_LAYOUTS}")


def tar_contents(layout: Layout, index_dir: str, workers: int,
                 named: str) -> tuple[str, dict[str, tuple[str, list[Member]]]]:
    """What the tars of a `tar` or `tar-folders` layout hold, told from their members (indexed into `index_dir`
    once): "webdataset" (labelled shards), "tar-of-images" (one tar of class folders, or ImageNet's tar of
    per-class tars) or "class-tars" (per-class tars, ImageNet's train/<class>.tar); with the index by tar URL.
    Anything else is refused in one line; `named` is how the error names the source (e.g. `--source URL`)."""
    if layout.kind == "tar":
        indexed = index_all([layout.url], index_dir, 1)
        kind = tar_kind(layout.url, indexed[0][1])
        if kind == "webdataset-unlabelled":
            tar_layout(layout.url, [layout.url], indexed)  # refuses, naming the fix
        return ("webdataset" if kind == "webdataset" else "tar-of-images"), {layout.url: indexed[0]}
    groups = layout.tar_groups
    urls = [url for tars in groups.values() for url in tars]
    indexed = dict(zip(urls, index_all(urls, index_dir, workers), strict=True)) if urls else {}
    layouts = {folder: tar_layout(folder, tars, [indexed[tar] for tar in tars]) for folder, tars in groups.items()}
    if "webdataset" in layouts.values() and set(layouts.values()) != {"webdataset"}:
        raise UserError(f"{named} mixes WebDataset shards and per-class tars "
                        f"({', '.join(f'{posixpath.basename(f)}: {k}' for f, k in layouts.items())}); "
                        f"{SUPPORTED_LAYOUTS}")
    return ("webdataset" if "webdataset" in layouts.values() else "class-tars"), indexed
