"""Helpers for the evaluation tests: parsed arguments of a command, small enough for two CPU cores."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from trainer.cli import build_parser

TINY = ["--arch", "resnet_tiny", "--image_size", "32", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def parse() -> Callable[..., argparse.Namespace]:
    """parse("eval-linear", "--data_path", d, ...) -> the namespace the CLI would pass to run()."""

    def _parse(command: str, *argv: str) -> argparse.Namespace:
        return build_parser(command).parse_args([*TINY, *argv])

    return _parse
