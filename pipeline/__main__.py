"""`python -m pipeline compile | submit | run-local`."""

from __future__ import annotations

import argparse
import importlib
import sys

from trainer.errors import UserError

COMMANDS = {
    "compile": ("pipeline.compile", "write the pipeline IR YAML"),
    "submit": ("pipeline.submit", "create a run on a Kubeflow Pipelines cluster"),
    "run-local": ("pipeline.local_run", "run the same pipeline on this machine (kfp local runner)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
