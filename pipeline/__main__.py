"""`python -m pipeline compile | submit | run-local | job-manifest | preflight`, behind the same error boundary as
`unmix-swav`."""

from __future__ import annotations

import argparse
import importlib

from trainer.cli import guarded_main

COMMANDS = {
    "compile": ("pipeline.compile", "write the pipeline IR YAML"),
    "submit": ("pipeline.submit", "create a run on a Kubeflow Pipelines cluster"),
    "run-local": ("pipeline.local_run", "run the same pipeline on this machine (kfp local runner)"),
    "job-manifest": ("pipeline.job_manifest",
                     "print the PyTorchJob or TrainJob a step would run (YAML, for kubectl apply)"),
    "preflight": ("pipeline.preflight", "check that the cluster has what the jobs need (exit 2 names what is missing)"),
}


def _run(command: str, argv: list[str], where: dict) -> None:
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {command}", description=help_text)
    module.add_arguments(parser)
    passthrough = getattr(module, "PASSTHROUGH", None)
    given, rest = list(argv), []
    if passthrough and "--" in argv:  # everything after `--` belongs to the trainer, not to this parser
        argv, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    if passthrough:
        setattr(args, passthrough, rest)
        args.command_line = given  # as typed, for a file that records how it was made
    where["report_dir"] = str(args.output) if command == "run-local" else None
    module.run(args)


def main(argv: list[str] | None = None) -> int:
    return guarded_main(COMMANDS, "python -m pipeline", argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
