"""`unmix-swav <command>`: one console script, one module per command.

Each command module exposes `add_arguments(parser)` and `run(args)`. Modules are imported lazily so
that `unmix-swav stage` does not pay for importing DETR. A `UserError` becomes one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trainer.errors import UserError
from trainer.storage import StorageUnavailable

STORAGE_DOWN_EXIT_CODE = 138  # retryable for the Training Operator's ExitCode policy

COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("trainer.pretrain", "SwAV + Un-Mix self-supervised pretraining"),
    "eval-linear": ("trainer.evaluation.linear", "linear evaluation on a frozen trunk"),
    "eval-semisup": ("trainer.evaluation.semisup", "semi-supervised fine-tuning on 1% / 10% of labels"),
    "eval-knn": ("trainer.evaluation.knn", "weighted kNN evaluation on frozen trunk features"),
    "detr": ("trainer.detr.train", "DETR fine-tuning on COCO-format data with the pretrained trunk"),
    "stage": ("trainer.data.staging", "validate and shard an image dataset into object storage"),
}


def build_parser(command: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"unmix-swav {command}", description=help_text)
    module.add_arguments(parser)
    return parser


def run_command(command: str, argv: list[str]) -> None:
    """Parse `argv` for `command` and run it (raises UserError on bad input)."""
    module = importlib.import_module(COMMANDS[command][0])
    args = build_parser(command).parse_args(argv)
    module.run(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = "\n".join(f"  {name:<13} {help_text}" for name, (_, help_text) in COMMANDS.items())
        print(f"usage: unmix-swav <command> [flags]\n\ncommands:\n{names}", file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        run_command(argv[0], argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StorageUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return STORAGE_DOWN_EXIT_CODE
    return 0
