"""`unmix-swav <command>`: one console script, one module per command, one error boundary.

Each command module exposes `add_arguments(parser)` and `run(args)`. Modules are imported lazily so
that `unmix-swav stage` does not pay for importing DETR. Errors become one line on stderr and an exit
code (trainer.run.boundary): 2 bad input, 138 retryable, 143 preempted, 1 unexpected (with a crash report).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from trainer import env
from trainer.errors import UserError
from trainer.run.boundary import run_guarded
from trainer.run.logs import setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("trainer.pretrain", "SwAV + Un-Mix self-supervised pretraining"),
    "eval-linear": ("trainer.evaluation.linear", "linear evaluation on a frozen trunk"),
    "eval-semisup": ("trainer.evaluation.semisup", "semi-supervised fine-tuning on 1% / 10% of labels"),
    "eval-knn": ("trainer.evaluation.knn", "weighted kNN evaluation on frozen trunk features"),
    "detr": ("trainer.detr.train", "DETR fine-tuning on COCO-format data with the pretrained trunk"),
    "stage": ("trainer.data.staging", "validate and shard an image dataset into object storage"),
    "report": ("trainer.report.build", "rebuild a run's report (report.html, report.md) from its step folders"),
    "export": ("trainer.export.command", "the trunk and linear classifier as safetensors, config.json, model card"),
    "plan": ("trainer.plan.cli", "the run planned before any GPU starts: recipe, memory, time, cost"),
}


def build_parser(command: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"unmix-swav {command}", description=help_text)
    module.add_arguments(parser)
    return parser


def parse(command: str, argv: list[str]) -> tuple[object, argparse.Namespace]:
    """The module of `command` and `argv` parsed by its flags (argparse exits 2 on a bad flag)."""
    module = importlib.import_module(COMMANDS[command][0])
    return module, build_parser(command).parse_args(argv)


def run_command(command: str, argv: list[str]) -> None:
    """Parse `argv` for `command` and run it (raises on failure; `main` turns that into an exit code)."""
    module, args = parse(command, argv)
    module.run(args)


def check_command(command: str, argv: list[str], world_size: int) -> None:
    """Parse `argv` for `command` and run the command's own checks for `world_size` processes, doing no work:
    launchers call it before they start anything. A bad flag raises UserError (one line, exit 2) instead of
    argparse's usage text; a command without a `check` is only parsed."""
    module = importlib.import_module(COMMANDS[command][0])
    parser = build_parser(command)

    def refuse(message: str) -> None:
        raise UserError(f"unmix-swav {command}: {message}")

    parser.error = refuse  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    check = getattr(module, "check", None)
    if check is not None:
        check(args, world_size)


def usage(commands: dict[str, tuple[str, str]], prog: str, argv: list[str]) -> int | None:
    """The exit code when `argv` names no known command (after printing the usage), else None."""
    if argv and argv[0] in commands:
        return None
    names = "\n".join(f"  {name:<13} {help_text}" for name, (_, help_text) in commands.items())
    print(f"usage: {prog} <command> [flags]\n\ncommands:\n{names}", file=sys.stderr)
    if argv and argv[0] in ("-h", "--help"):
        return 0
    if argv:
        print(f"error: unknown command {argv[0]!r}; choose one of: {', '.join(commands)}", file=sys.stderr)
    return 2


def guarded_main(commands: dict[str, tuple[str, str]], prog: str, argv: list[str] | None,
                 run: Callable[[str, list[str], dict], None]) -> int:
    """The shared entry point of `unmix-swav` and `python -m pipeline`: usage, then inside the boundary the
    environment's check (trainer.env), logging and the command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    code = usage(commands, prog, argv)
    if code is not None:
        return code
    where: dict[str, str | None] = {"report_dir": None}  # filled in once the flags name a dump path

    def checked_run() -> None:
        env.current()  # a bad variable is one line, exit 2, before any work
        setup_logging()
        run(argv[0], argv[1:], where)

    return run_guarded(checked_run, lambda: where["report_dir"])


def _run_trainer_command(command: str, argv: list[str], where: dict) -> None:
    module, args = parse(command, argv)
    where["report_dir"] = getattr(args, "dump_path", None) or getattr(args, "dest", None)
    module.run(args)


def main(argv: list[str] | None = None) -> int:
    return guarded_main(COMMANDS, "unmix-swav", argv, _run_trainer_command)
