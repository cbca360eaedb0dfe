"""`python -m pipeline compile`: write the pipeline's IR YAML (the copy kept in the repo is checked).

`--param NAME=VALUE` bakes a parameter's default into the YAML, e.g. `--param job_backend=pytorchjob` for a
Training Operator v1 cluster, so that runs started from the Kubeflow Pipelines UI get it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kfp import compiler

from components.image import TRAINER_IMAGE
from launch.k8s_names import check_image
from trainer.errors import UserError

COMPILED_PATH = Path(__file__).with_name("unmix_swav_pipeline.yaml")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`name=value`; the value is read as JSON when it parses (numbers, lists, dicts), else as a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--param {pair!r} is not name=value; e.g. --param num_nodes=4")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


def check_parameter_names(params: dict[str, Any]) -> None:
    """Refuse a `--param` name the pipeline function does not have, naming the ones it has."""
    import inspect

    from pipeline.dag import unmix_swav_pipeline

    known = list(inspect.signature(unmix_swav_pipeline.pipeline_func).parameters)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise UserError(f"--param {', '.join(unknown)}: not a pipeline parameter; use one of {', '.join(known)}")


def compile_pipeline(output: Path = COMPILED_PATH, image: str = TRAINER_IMAGE,
                     defaults: dict[str, Any] | None = None) -> Path:
    """Compile; `image` replaces the default trainer image in every step and in the `image` parameter;
    `defaults` replace parameters' defaults (names checked against the pipeline's)."""
    from pipeline.dag import unmix_swav_pipeline

    check_parameter_names(defaults or {})
    check_image("--image", image)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / "pipeline.yaml"
        compiler.Compiler().compile(unmix_swav_pipeline, str(scratch), pipeline_parameters=defaults or None)
        text = scratch.read_text(encoding="utf-8")
    # kfp's leading comment lists the parameters in an unstable order: keep the file reproducible.
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(lines).replace(TRAINER_IMAGE, image), encoding="utf-8")
    return output


def add_arguments(parser) -> None:
    parser.add_argument("--output", type=Path, default=COMPILED_PATH, help="where to write the IR YAML")
    parser.add_argument("--image", default=os.environ.get("UNMIX_SWAV_IMAGE", TRAINER_IMAGE),
                        help="trainer image for every step (default: %(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter's default (repeatable, JSON when it parses), e.g. job_backend=pytorchjob")


def run(args) -> None:
    print(f"wrote {compile_pipeline(args.output, args.image, parse_params(args.param))}")
