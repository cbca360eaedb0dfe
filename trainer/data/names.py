"""Names every data module agrees on, defined once: the staged format's files, the splits and the one rule
that finds a split in a folder or shard name, which files are ignored, which names are images, how a name is printed.

Imports nothing of trainer/data: every other data module may import it (the bottom of the package).
"""

from __future__ import annotations

import posixpath
import re

MANIFEST = "manifest.json"
# 2: WebDataset-convention shards (<key>.<ext> + <key>.cls + <key>.json); 1: members named by their source
# path, labels only in index.npz. Both are read the same way (by the index); stage writes 2.
STAGED_FORMAT = "unmix-swav-staged/2"
STAGED_FORMATS = ("unmix-swav-staged/1", STAGED_FORMAT)
SPLITS = ("train", "val")  # the splits a command reads
# A word in a folder or shard name -> the split it names (`test` is recognised so that it can be left out).
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
SPLIT_FOLDERS = ("train", "val", "validation")  # folders below a data root that hold a split (ImageFolder or shards)
MAX_EXAMPLES_LOGGED = 5
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff",
                              ".webp", ".gif"})


def folder_split(name: str) -> str | None:
    """The split a folder named `name` holds directly below a data root (`validation` -> val), else None."""
    return SPLIT_WORDS[name] if name in SPLIT_FOLDERS else None


def split_words(relative: str, suffix: str = "") -> set[str]:
    """The splits the words of a path name (`train/...`, `...-validation-00.tar`) say, `suffix` dropped first."""
    words = re.split(r"[/\-_.\s]+", relative.lower().removesuffix(suffix))
    return {SPLIT_WORDS[word] for word in words if word in SPLIT_WORDS}


def is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def printable_name(name: str) -> str:
    """`name` with each byte that is not valid UTF-8 written as \\xNN: safe to log and to store in JSON."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_ignored_name(relative_path: str) -> bool:
    """Hidden files and folders (.DS_Store, ._x.jpg, .ipynb_checkpoints) and macOS archive debris."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative_path.split("/"))
