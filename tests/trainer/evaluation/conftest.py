"""Helpers for the evaluation tests: parsed arguments of a command, small enough for two CPU cores."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainer.cli import build_parser
from trainer.evaluation import linear, loop

TINY = ["--arch", "resnet_tiny", "--image_size", "32", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def parse() -> Callable[..., argparse.Namespace]:
    """parse("eval-linear", "--data_path", d, ...) -> the namespace the CLI would pass to run()."""

    def _parse(command: str, *argv: str) -> argparse.Namespace:
        return build_parser(command).parse_args([*TINY, *argv])

    return _parse


@dataclass
class InterruptedLinear:
    straight: dict[str, Any]  # the results of the run that was not interrupted
    dump: Path  # the interrupted run's folder, holding epoch 1's checkpoint
    args: Callable[[], argparse.Namespace]  # fresh arguments of the interrupted run

    def resume(self) -> dict[str, Any]:
        return linear.run_linear(self.args())


@pytest.fixture
def interrupted_linear(parse, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InterruptedLinear:
    """A three-epoch eval-linear run straight through, and the same run killed during epoch 2."""

    def args(dump: Path) -> argparse.Namespace:
        return parse("eval-linear", "--data_path", str(shapes_dir), "--epochs", "3", "--batch_size", "16",
                     "--scheduler_type", "step", "--decay_epochs", "1", "2", "--dump_path", str(dump))

    straight = linear.run_linear(args(tmp_path / "straight"))

    real_validate, calls = loop.validate, []

    def validate_then_crash(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # dies during epoch 2, after epoch 1's checkpoint
            raise KeyboardInterrupt
        return real_validate(*a, **k)

    monkeypatch.setattr(loop, "validate", validate_then_crash)
    with pytest.raises(KeyboardInterrupt):
        linear.run_linear(args(tmp_path / "resumed"))
    monkeypatch.setattr(loop, "validate", real_validate)
    return InterruptedLinear(straight, tmp_path / "resumed", lambda: args(tmp_path / "resumed"))
