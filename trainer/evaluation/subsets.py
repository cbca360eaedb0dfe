"""Label subsets for semi-supervised evaluation: SimCLR-format lists, or a seeded class-balanced draw.

A list names one image file per line (`n01440764_10026.JPEG`), matched to the basename of a sample's
`name(i)`; a line with a folder (`class/file.jpg`) matches the last components instead, which is what
we write when basenames alone are ambiguous (generated datasets reuse file names across classes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from trainer import storage
from trainer.errors import UserError
from trainer.evaluation.common import check_file
from trainer.seeding import generator

SHOWN_EXAMPLES = 3  # names quoted in a refusal; the count says how many more


def balanced_subset(targets: Sequence[int], num_classes: int, percent: float, seed: int) -> list[int]:
    """The same number of samples from every class (percent of the average class size, at least one).

    Each class is drawn from its own generator seeded from (seed, class), so the draw does not depend on
    the order of the other classes; a class smaller than the quota contributes all its samples.
    """
    if not 0 < percent <= 100:
        raise UserError(f"label percentage {percent} is outside (0, 100]; use 1 or 10")
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, target in enumerate(targets):
        by_class[target].append(index)
    quota = max(1, round(percent / 100 * len(targets) / num_classes))
    chosen: list[int] = []
    for label, members in enumerate(by_class):
        order = torch.randperm(len(members), generator=generator(seed, label)).tolist()
        chosen.extend(members[i] for i in order[:quota])
    return sorted(chosen)


def _components(name: str) -> list[str]:
    return [part for part in name.replace("\\", "/").split("/") if part]


def subset_names(source, indices: Sequence[int]) -> list[str]:
    """Names that identify `indices` in `source`: basenames when unique there, else `folder/basename`."""
    basenames = [_components(source.name(i))[-1] for i in range(len(source))]
    depth = 1 if len(set(basenames)) == len(basenames) else 2
    return ["/".join(_components(source.name(i))[-depth:]) for i in indices]


def match_subset(source, lines: Sequence[str], url: str) -> list[int]:
    """Indices of `source` named by `lines` (blank lines ignored); every line must match exactly one."""
    wanted = [line.strip() for line in lines if line.strip()]
    if not wanted:
        raise UserError(f"subset file {url} is empty; it must list one image file name per line")
    for number, line in enumerate(wanted, 1):  # names of files inside --data_path, never a way out of it
        storage.check_relative(line, f"--subset_file {url}: name {number}")
    lookup: dict[str, list[int]] = {}
    for index in range(len(source)):
        parts = _components(source.name(index))
        for depth in range(1, len(parts) + 1):
            lookup.setdefault("/".join(parts[-depth:]), []).append(index)
    missing = [line for line in wanted if line.strip("/") not in lookup]
    if missing:
        examples = ", ".join(map(repr, missing[:SHOWN_EXAMPLES]))
        raise UserError(f"--subset_file: {len(missing)}/{len(wanted)} names of {url} are not in the training data "
                        f"(e.g. {examples}); the list must name files of this --data_path")
    ambiguous = [line for line in wanted if len(lookup[line.strip("/")]) > 1]
    if ambiguous:
        raise UserError(f"{ambiguous[0]!r} in {url} names {len(lookup[ambiguous[0].strip('/')])} images; "
                        "write class_folder/file_name lines to tell them apart")
    return sorted({lookup[line.strip("/")][0] for line in wanted})


def check_subset_file(url: str) -> None:
    check_file("--subset_file", url, "pass a list of image file names (one a line), or leave it empty for a "
                                     "class-balanced draw")


def read_subset_file(source, url: str) -> list[int]:
    check_subset_file(url)
    try:
        text = storage.read_text(url)
    except UnicodeDecodeError as error:
        raise UserError(f"--subset_file {url} is not UTF-8 text ({error.reason} at byte {error.start}); pass a "
                        "list of image file names, one a line") from error
    return match_subset(source, text.splitlines(), url)


def subset_text(source, indices: Sequence[int]) -> tuple[str, str]:
    """subset.txt's content for `indices` (one name a line) and its sha256, the subset's identity."""
    text = "".join(f"{name}\n" for name in subset_names(source, indices))
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()
