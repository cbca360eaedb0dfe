"""WebDataset shard sets read as they are (the conventions staging writes are trainer/data/shard_writer.py's).

A WebDataset shard is a plain tar whose members are grouped into samples by key: the key of a member is its
path up to the first dot of its basename, the rest is its suffix (`n01440764_10026.jpg`, `...cls`,
`...json`), and consecutive members with one key form one sample. The rule, the `__key__` meta members it
skips, brace patterns (`shard-{0000..1023}.tar`) and wids index files are the libraries' own: this module
calls `webdataset` and `wids` for them instead of re-implementing them.

What is ours: labels from `.cls` (or a `.json`'s "label"), class names from a `classes.txt`/`classes.json`
beside the shards, train/val by folder or by name, and random access. Shards are indexed by one sequential
header pass each (trainer/data/archives.py; the small label members are read on the way), the index is kept
(UNMIX_INDEX_CACHE, any fsspec URL) so that a shard set is read once, and samples are then read by byte
range like staged data, so that the sampler's exact mid-epoch resume and per-rank shards work unchanged.
Samples without a usable label are left out, counted and reported, never fatal.

A folder of tars is recognised by its content, never by a guess: WebDataset shards, ImageNet's per-class
tars and tars of class folders look different inside (trainer/data/layout.py: `tar_kind`), and a folder that
fits none, or mixes them, is refused in one line that names the supported layouts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from webdataset.shardlists import expand_urls
from wids.wids_specs import urldir

from trainer import env, storage
from trainer.data.archives import (
    LABEL_SUFFIXES,
    TAR_SUFFIX,
    Member,
    index_all,
    refuse_compressed,
)
from trainer.data.layout import (
    SUPPORTED_LAYOUTS,
    folder_tar_groups,
    is_brace_pattern,
    is_image_suffix,
    is_wids_index,
    member_groups,
    tar_layout,
)
from trainer.data.names import (
    MAX_EXAMPLES_LOGGED,
    SPLIT_FOLDERS,
    printable_name,
    split_words,
)
from trainer.data.readers import ShardedSource
from trainer.errors import UserError

log = logging.getLogger(__name__)

CLASSES_FILES = ("classes.txt", "classes.json")


def default_index_dir() -> str:
    """Where indexes of shard sets read directly are kept: UNMIX_INDEX_CACHE (any fsspec URL, e.g. an s3://
    prefix shared by every pod) or ~/.cache/unmix-swav/tar-index."""
    return env.current().index_cache or os.path.join(os.path.expanduser("~"), ".cache", "unmix-swav",
                                                               "tar-index")


# --- finding the shards --------------------------------------------------------------------------------------


def _common_folder(urls: list[str]) -> str:
    parts = [url.split("/")[:-1] for url in urls]
    common = parts[0]
    for other in parts[1:]:
        length = next((n for n, (a, b) in enumerate(zip(common, other, strict=False)) if a != b),
                      min(len(common), len(other)))
        common = common[:length]
    return "/".join(common)


def _wids_shards(url: str) -> tuple[list[str], list[int]]:
    """Shard URLs and sample counts of a wids index; relative URLs are resolved as wids does (against the
    index's folder)."""
    try:
        spec = json.loads(storage.read_verified(url, unrecorded_ok=True).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{url} is not valid JSON ({error}); pass a wids index ({{\"wids_version\": 1, "
                        "\"shardlist\": [{\"url\": ..., \"nsamples\": ...}]}), a folder or a brace pattern") from error
    if not isinstance(spec, dict) or spec.get("wids_version") != 1:
        raise UserError(f"{url} is not a wids index (no \"wids_version\": 1); {SUPPORTED_LAYOUTS}")
    parts = [spec, *spec.get("datasets", [])]
    if any("source_url" in part for part in parts):
        raise UserError(f"{url} refers to other index files (source_url); list the shards in one index")
    base = urldir(url)
    shards = [shard for part in parts for shard in part.get("shardlist", [])]
    if not shards or not all(isinstance(s, dict) and "url" in s and "nsamples" in s for s in shards):
        raise UserError(f"{url}: a wids index needs a non-empty shardlist of {{\"url\", \"nsamples\"}} entries")
    urls = [storage.child_url(base, s["url"], f"{url}: shardlist entry {n}") for n, s in enumerate(shards)]
    return urls, [int(s["nsamples"]) for s in shards]


@dataclass
class ShardList:
    """The shards a URL names, and the folder their names are read relative to (for splits by name)."""

    given: str
    root: str
    urls: list[str]
    nsamples: list[int] | None = None  # from a wids index


def resolve_shards(url: str) -> ShardList:
    """The tar shards of a folder, a brace pattern, a wids index or a single .tar."""
    if is_brace_pattern(url):
        urls = expand_urls(url)  # webdataset's expansion: braces and `::`-separated lists
        return ShardList(url, _common_folder(urls), urls)
    if is_wids_index(url):
        if not storage.exists(url):
            raise UserError(f"wids index {url} does not exist")
        urls, counts = _wids_shards(url)
        return ShardList(url, _common_folder(urls), urls, counts)
    fs, path = storage.filesystem(url)
    if storage.with_retries(lambda: fs.isfile(path), f"checking {url}"):
        refuse_compressed(url)
        return ShardList(url, url.rsplit("/", 1)[0], [url])
    urls = [tar for group in folder_tar_groups(url).values() for tar in group]
    if not urls:
        raise UserError(f"{url} holds no .tar shards; {SUPPORTED_LAYOUTS}")
    return ShardList(url, url.rstrip("/"), urls)


def assign_splits(shards: ShardList) -> dict[str, list[int]]:
    """Split -> shard numbers, by the split its path below the set's folder names (`train/...`,
    `...-validation-00.tar`); a set whose shards name no split is one train split. Shards that name two
    splits, or that name none next to ones that do, are refused; `test` shards are left out."""
    relative = [url[len(shards.root):].lstrip("/") for url in shards.urls]
    found = [split_words(name, TAR_SUFFIX) for name in relative]
    both = [(name, words) for name, words in zip(relative, found, strict=True) if len(words) > 1]
    if both:
        raise UserError(f"{shards.given}: shard {both[0][0]} names more than one split "
                        f"({', '.join(sorted(both[0][1]))}); rename it or pass each split's shards separately")
    if not any(found):
        return {"train": list(range(len(shards.urls)))}
    unnamed = [name for name, words in zip(relative, found, strict=True) if not words]
    if unnamed:
        raise UserError(f"{shards.given}: {len(unnamed)} shards (e.g. {unnamed[0]}) name no split while others "
                        "name train or val; put each split's shards in train/ and val/ or name them so")
    splits: dict[str, list[int]] = {}
    for number, words in enumerate(found):
        splits.setdefault(next(iter(words)), []).append(number)
    if "test" in splits:
        log.info("%s: %d test shards left out (no command reads a test split)", shards.given, len(splits.pop("test")))
    if not splits:
        raise UserError(f"{shards.given}: every shard is a test shard; pass the train or val shards")
    return splits


def read_classes_file(url: str) -> list[str]:
    """Class names by index from classes.txt (line i names class i) or classes.json (a list, {name: index}
    or {"index": name})."""
    text = storage.read_verified(url, unrecorded_ok=True).decode("utf-8")
    if url.endswith(".txt"):
        names = [line.strip() for line in text.rstrip("\n").splitlines()]
    else:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise UserError(f"{url} is not valid JSON ({error}); write a list of class names") from error
        if isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
            data = {str(index): name for name, index in data.items()}
        if isinstance(data, dict) and all(str(k).isdigit() for k in data):
            by_index = {int(k): v for k, v in data.items()}
            data = [by_index.get(i) for i in range(max(by_index, default=-1) + 1)]
        names = data if isinstance(data, list) else []
    if not names or not all(isinstance(name, str) and name for name in names):
        raise UserError(f"{url} does not name every class from 0 up (one name a line, or a JSON list); fix or "
                        "remove it")
    if len(set(names)) < len(names):
        twice = next(name for name, count in Counter(names).items() if count > 1)
        raise UserError(f"{url} names class {twice!r} twice; class names must be unique")
    return names


def find_classes_file(folder: str) -> str | None:
    """classes.txt or classes.json in `folder`, or in its parent when `folder` is a split folder."""
    folders = [folder]
    if posixpath.basename(folder.rstrip("/")) in SPLIT_FOLDERS and "/" in folder.rstrip("/"):
        folders.append(folder.rstrip("/").rsplit("/", 1)[0])
    for candidate in folders:
        for name in CLASSES_FILES:
            if storage.exists(storage.join(candidate, name)):
                return storage.join(candidate, name)
    return None


# --- what a tar holds ----------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One WebDataset sample: its image member, label and name."""

    shard: int
    key: str
    image: Member
    name: str  # the original file name (the .json's "filename") when it says, else the image member's path
    label: int | None
    class_name: str | None
    problem: str | None = None  # why it cannot be used (no label, a bad one)


def _labels_of(key: str, parts: dict[str, Member]) -> tuple[int | None, str | None, str | None, str | None]:
    """(label, class name, original file name, problem) from a sample's `.cls`/`.cls2` and `.json` members."""
    label = class_name = filename = None
    for suffix in LABEL_SUFFIXES:
        if suffix in parts and parts[suffix].text is None:
            return None, None, None, f"{key}.{suffix} is over {parts[suffix].size} bytes, too large for a label"
    if "json" in parts:
        try:
            meta = json.loads(parts["json"].text or "")
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            label = meta.get("label", meta.get("cls"))
            class_name = next((meta[k] for k in ("class_name", "class") if isinstance(meta.get(k), str)), None)
            filename = next((meta[k] for k in ("filename", "path") if isinstance(meta.get(k), str)), None)
    for suffix in ("cls", "cls2"):
        if suffix in parts:
            try:
                label = int((parts[suffix].text or "").strip())
            except ValueError:
                return None, class_name, filename, f"{key}.{suffix} is not an integer label"
            break
    if label is None:
        return None, class_name, filename, "no label: neither a .cls member nor a .json with \"label\""
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        return None, class_name, filename, f"label {label!r} is not a class index (an integer from 0)"
    return label, class_name, filename, None


def shard_samples(shard: int, members: list[Member]) -> tuple[list[Sample], list[str]]:
    """(samples, paths of members that belong to no image sample) of one WebDataset shard."""
    samples, ignored = [], []
    for key, group in member_groups(members):
        images = [member for suffix, member in group if is_image_suffix(suffix)]
        if not images:
            ignored += [member.path for _, member in group]
            continue
        suffixes = [suffix for suffix, _ in group]
        label, class_name, filename, problem = _labels_of(key, dict(group))
        if len(set(suffixes)) < len(suffixes):
            problem = f"two members named {key}.{Counter(suffixes).most_common(1)[0][0]}"
        samples.append(Sample(shard, key, images[0], filename or images[0].path, label, class_name, problem))
        ignored += [member.path for member in images[1:]]
    return samples, ignored


# --- a whole shard set ---------------------------------------------------------------------------------------


@dataclass
class ShardSet:
    """A WebDataset shard set, indexed: every usable sample of every split, the classes, what was left out."""

    given: str
    urls: list[str]
    keys: list[str]  # per shard: URL, size and version (what its cached index was made from)
    ends: list[int]  # per shard: the end of its last sample's data (read-ahead never goes past it)
    split_shards: dict[str, list[int]]  # split -> its shard numbers
    splits: dict[str, list[Sample]]
    classes: list[str]
    classes_file: str | None
    ignored: list[str] = field(default_factory=list)  # `<shard>/<member>` of members of no image sample
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (shard number, member path, reason)


def _classes(samples: list[Sample], given: list[str] | None) -> list[str]:
    """The class names: the classes file's, else the samples' consistent class names, else the labels."""
    if given is not None:
        return given
    count = max((s.label for s in samples if s.label is not None), default=-1) + 1
    named: dict[int, set[str]] = {}
    for sample in samples:
        if sample.label is not None:
            named.setdefault(sample.label, set()).add(sample.class_name or "")
    names = [next(iter(named.get(i, {""}))) for i in range(count)]
    consistent = all(len(named.get(i, {""})) == 1 for i in range(count)) and all(names)
    return names if consistent and len(set(names)) == count else [str(i) for i in range(count)]


def read_shard_set(url: str, index_dir: str, workers: int = 8) -> ShardSet:
    """Index (or reuse the index of) every shard of the WebDataset set `url` names; refuse what is not one."""
    shards = resolve_shards(url)
    indexed = index_all(shards.urls, index_dir, workers)
    if tar_layout(url, shards.urls, indexed) != "webdataset":
        raise UserError(f"{url} holds ImageNet-style per-class tars, which are not read directly: stage them "
                        f"first (unmix-swav stage --source {url} --dest URL) and pass the dest as --data_path")
    split_shards = assign_splits(shards)
    classes_file = find_classes_file(shards.root)
    given = read_classes_file(classes_file) if classes_file else None
    result = ShardSet(url, shards.urls, [key for key, _ in indexed], [0] * len(shards.urls), split_shards, {}, [],
                      classes_file)
    every: list[Sample] = []
    for split, numbers in split_shards.items():
        result.splits[split] = []
        for number in numbers:
            samples, ignored = shard_samples(number, indexed[number][1])
            shard_name = posixpath.basename(shards.urls[number])
            result.ignored += [f"{shard_name}/{path}" for path in ignored]
            if shards.nsamples is not None and len(member_groups(indexed[number][1])) != shards.nsamples[number]:
                log.warning("%s: %d samples, but the wids index says %d", shards.urls[number],
                            len(member_groups(indexed[number][1])), shards.nsamples[number])
            result.ends[number] = max((s.image.offset + s.image.size for s in samples), default=0)
            result.splits[split] += samples
        every += result.splits[split]
    result.classes = _classes(every, given)
    for split, samples in result.splits.items():
        usable, names = [], set()
        for sample in samples:
            if sample.problem is None and sample.label is not None and sample.label >= len(result.classes):
                sample.problem = f"label {sample.label} is past the {len(result.classes)} classes of {classes_file}"
            if sample.problem is not None:
                result.bad.append((sample.shard, sample.image.path, sample.problem))
                continue
            if sample.name in names:  # two files of one name: qualify by shard and member, both stay
                sample.name = f"{posixpath.basename(shards.urls[sample.shard])}/{sample.image.path}"
            names.add(sample.name)
            usable.append(sample)
        result.splits[split] = usable
    _report(result)
    return result


def _report(shard_set: ShardSet) -> None:
    counts = ", ".join(f"{split} {len(samples)}" for split, samples in shard_set.splits.items())
    log.info("%s: WebDataset shards, %d classes (%s), %s samples", printable_name(shard_set.given),
             len(shard_set.classes), shard_set.classes_file or "class names from the labels", counts)
    if shard_set.bad:
        examples = "; ".join(f"{posixpath.basename(shard_set.urls[number])}/{path}: {reason}"
                             for number, path, reason in shard_set.bad[:MAX_EXAMPLES_LOGGED])
        log.warning("%s: %d samples left out (no usable label), e.g. %s", printable_name(shard_set.given),
                    len(shard_set.bad), examples)


class WebDatasetSource(ShardedSource):
    """One split of a WebDataset shard set, read by byte range (or from UNMIX_SHARD_CACHE) like staged data."""

    def __init__(self, shard_set: ShardSet, split: str, cache_dir: str | None) -> None:
        samples = shard_set.splits[split]
        names = np.array([s.name.encode("utf-8", "surrogateescape") for s in samples], dtype=np.bytes_)
        super().__init__(shard_set.given, shard_set.classes, names,
                         np.array([s.label for s in samples], dtype=np.int64),
                         shard_urls=list(shard_set.urls), shard_ends=list(shard_set.ends),
                         shard=np.array([s.shard for s in samples], dtype=np.int32),
                         offset=np.array([s.image.offset for s in samples], dtype=np.int64),
                         size=np.array([s.image.size for s in samples], dtype=np.int64),
                         cache_dir=cache_dir, cache_names=[_cache_name(key) for key in shard_set.keys],
                         versions=list(shard_set.keys))
        self.left_out = len(shard_set.bad)


def _cache_name(archive_key: str) -> str:
    return hashlib.sha256(archive_key.encode("utf-8")).hexdigest()


def open_webdataset(url: str, split: str | None = None, cache_dir: str | None = None) -> WebDatasetSource:
    """One split (default train) of the WebDataset shard set `url` names, as an ImageSource."""
    shard_set = read_shard_set(url, default_index_dir())
    split = split or "train"
    if split not in shard_set.splits:
        raise UserError(f"WebDataset shards {url} have no {split} split (they have: {', '.join(shard_set.splits)}); "
                        "name each split's shards with train or val (folder or file name), or pass a folder "
                        "holding both")
    if not shard_set.splits[split]:
        raise UserError(f"split {split!r} of {url} has no usable samples ({len(shard_set.bad)} left out, e.g. "
                        f"{shard_set.bad[0][2] if shard_set.bad else 'no image members'})")
    return WebDatasetSource(shard_set, split, cache_dir)
