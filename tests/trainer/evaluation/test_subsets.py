"""Label subsets: seeded class-balanced draws, SimCLR-format lists, and their refusals."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from trainer import storage
from trainer.data.sources import open_source
from trainer.errors import UserError
from trainer.evaluation.subsets import balanced_subset, match_subset, read_subset_file, subset_names, subset_text


def test_balanced_subset_is_deterministic_and_balanced() -> None:
    targets = [c for c in range(5) for _ in range(200)]
    first = balanced_subset(targets, 5, percent=10, seed=7)
    assert first == balanced_subset(targets, 5, percent=10, seed=7)
    assert first != balanced_subset(targets, 5, percent=10, seed=8)
    assert Counter(targets[i] for i in first) == {c: 20 for c in range(5)}
    assert len(set(first)) == len(first)


def test_one_percent_keeps_every_class_and_small_classes_give_all() -> None:
    targets = [0] * 300 + [1] * 300 + [2] * 2  # average class: 200.7 -> quota 2 at 1%
    chosen = balanced_subset(targets, 3, percent=1, seed=0)
    assert Counter(targets[i] for i in chosen) == {0: 2, 1: 2, 2: 2}
    tiny = balanced_subset([0] * 10 + [1] * 10, 2, percent=1, seed=0)
    assert Counter(i // 10 for i in tiny) == {0: 1, 1: 1}  # never a class without a label


def test_draw_of_a_class_does_not_depend_on_other_classes() -> None:
    a = balanced_subset([0] * 50 + [1] * 50, 2, percent=10, seed=3)
    b = balanced_subset([0] * 50 + [1] * 50 + [2] * 50, 3, percent=10, seed=3)
    assert [i for i in a if i < 50] == [i for i in b if i < 50]


def test_bad_percentage_is_refused() -> None:
    with pytest.raises(UserError, match="use 1 or 10"):
        balanced_subset([0, 1], 2, percent=0, seed=0)


class NamedSource:
    """The two members of ImageSource that subsets use."""

    def __init__(self, names: list[str]):
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]


def test_simclr_basenames_match_and_round_trip() -> None:
    source = NamedSource(["n01/n01_1.JPEG", "n01/n01_2.JPEG", "n02/n02_7.JPEG"])
    assert match_subset(source, ["n02_7.JPEG", "", "n01_1.JPEG\n"], "list") == [0, 2]
    assert subset_names(source, [0, 2]) == ["n01_1.JPEG", "n02_7.JPEG"]


def test_repeated_basenames_use_folder_names() -> None:
    source = NamedSource(["circle/00001.jpg", "square/00001.jpg"])
    assert subset_names(source, [1]) == ["square/00001.jpg"]
    assert match_subset(source, ["square/00001.jpg"], "list") == [1]
    with pytest.raises(UserError, match="names 2 images"):
        match_subset(source, ["00001.jpg"], "list")


def test_unknown_names_and_empty_lists_are_refused() -> None:
    source = NamedSource(["a/x.jpg"])
    with pytest.raises(UserError, match=r"1/2 names of list are not in the training data"):
        match_subset(source, ["x.jpg", "y.jpg"], "list")
    with pytest.raises(UserError, match="is empty"):
        match_subset(source, ["", "  "], "list")


def test_written_subset_reads_back_from_s3(s3_server, shapes_dir: Path) -> None:
    source = open_source(str(shapes_dir), split="train")
    chosen = balanced_subset(source.targets, len(source.classes), 10, seed=1)
    text, digest = subset_text(source, chosen)
    url = f"{s3_server.bucket('subsets')}/shapes/subset.txt"
    storage.write_text(url, text)
    assert read_subset_file(source, url) == chosen
    assert subset_text(source, read_subset_file(source, url))[1] == digest
