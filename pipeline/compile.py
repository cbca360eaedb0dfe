"""`python -m pipeline compile`: write the pipeline's IR YAML, by default to build/unmix_swav_pipeline.yaml.

The copy kept in the repo (pipeline/unmix_swav_pipeline.yaml, the default image and parameters) is written only
when asked (`--output pipeline/unmix_swav_pipeline.yaml`); a test checks it is current. `--param NAME=VALUE`
bakes a parameter's default into the YAML, e.g. `--param job_backend=pytorchjob` for a Training Operator v1
cluster, so that runs started from the Kubeflow Pipelines UI get it; names, types and choices are checked first.
`--s3-credentials pod-identity` compiles steps that mount no S3 Secret (and `s3_secret_name` defaults to empty, so
the jobs mount none either): every pod takes S3 access from its service account (IRSA, GKE Workload Identity).
`--image-pull-secret NAME` lets every step's pod, and by default every job's, pull from a private registry.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kfp import compiler

from components.image import TRAINER_IMAGE
from launch.k8s_names import check_dns_subdomain, check_image
from pipeline.platform import S3_CREDENTIALS, for_cluster
from trainer.errors import UserError

COMPILED_PATH = Path(__file__).with_name("unmix_swav_pipeline.yaml")  # the repo's copy
DEFAULT_OUTPUT = Path("build") / COMPILED_PATH.name  # what a user compiles (build/ is git-ignored)
POD_IDENTITY = ("for S3 access from the pods' service accounts (IRSA, GKE Workload Identity) compile with "
                "--s3-credentials pod-identity; else name the Secret")
KINDS = {int: "a whole number, e.g. 8", float: "a number, e.g. 72.0", bool: "true or false",
         str: "a string", list: 'a JSON list, e.g. ["--epochs", "1"]', dict: 'a JSON object, e.g. {"key": "value"}'}


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


def _choices() -> dict[str, tuple[str, ...]]:
    from launch.run import LAUNCHERS
    from launch.spec import BACKENDS

    return {"job_backend": BACKENDS, "launcher": LAUNCHERS}


def check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with names, types and the enum parameters' choices checked (one line naming the parameter and
    what would work); a number or true/false given to a string parameter is that string (`cpu_per_node=32`)."""
    import inspect

    from pipeline.dag import unmix_swav_pipeline

    check_parameter_names(params)
    signature = inspect.signature(unmix_swav_pipeline.pipeline_func).parameters
    checked = {}
    for name, value in params.items():
        kind = signature[name].annotation
        if kind is str and isinstance(value, int | float | bool):
            value = json.dumps(value)
        fits = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, fits = float(value), True
        if not fits:
            raise UserError(f"--param {name}={json.dumps(value)} is not valid: {name} takes {KINDS[kind]}")
        choices = _choices().get(name)
        if choices and value not in choices:
            raise UserError(f"--param {name}={value} is not valid: use one of {', '.join(choices)}")
        checked[name] = value
    return checked


def compile_pipeline(output: Path = COMPILED_PATH, image: str = TRAINER_IMAGE,
                     defaults: dict[str, Any] | None = None, s3_credentials: str = "secret",
                     image_pull_secrets: Sequence[str] = ()) -> Path:
    """Compile; `image` replaces the default trainer image in every step and in the `image` parameter;
    `defaults` replace parameters' defaults (names checked against the pipeline's); `s3_credentials` is one of
    S3_CREDENTIALS (pod-identity: no step mounts the S3 Secret); `image_pull_secrets` go on every step's pod and
    are the jobs' default (`image_pull_secrets`)."""
    from pipeline.dag import unmix_swav_pipeline

    defaults = check_parameters(defaults or {})
    check_image("--image", image)
    if s3_credentials not in S3_CREDENTIALS:
        raise UserError(f"--s3-credentials {s3_credentials!r} is not known; use one of {', '.join(S3_CREDENTIALS)}")
    for name in image_pull_secrets:
        check_dns_subdomain("--image-pull-secret", name)
    if s3_credentials == "pod-identity":
        defaults.setdefault("s3_secret_name", "")  # the jobs without a Secret too, unless one is named
    elif defaults.get("s3_secret_name") == "":
        raise UserError(f"--param s3_secret_name= (empty) leaves the steps' Secret reference empty: {POD_IDENTITY}")
    if image_pull_secrets:
        defaults.setdefault("image_pull_secrets", list(image_pull_secrets))
    pipeline = for_cluster(unmix_swav_pipeline, s3_credentials, image_pull_secrets)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(scratch), pipeline_parameters=defaults or None)
        text = scratch.read_text(encoding="utf-8")
    # kfp's leading comment lists the parameters in an unstable order: keep the file reproducible.
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(lines).replace(TRAINER_IMAGE, image), encoding="utf-8")
    return output


def add_arguments(parser) -> None:
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to write the IR YAML (default: %(default)s; the repo's copy: {COMPILED_PATH.name} "
                             "under pipeline/, only for a change to the pipeline itself)")
    parser.add_argument("--image", default=os.environ.get("UNMIX_SWAV_IMAGE", TRAINER_IMAGE),
                        help="trainer image for every step (default: %(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter's default (repeatable, JSON when it parses), e.g. job_backend=pytorchjob")
    parser.add_argument("--s3-credentials", choices=S3_CREDENTIALS, default="secret",
                        help="how every pod gets S3 access: the Secret s3_secret_name (default), or pod-identity: "
                             "no Secret, the run's and the jobs' service accounts (IRSA, GKE Workload Identity)")
    parser.add_argument("--image-pull-secret", action="append", default=[], metavar="NAME",
                        help="a docker-registry Secret every step's pod and (by default) every job's pod pulls the "
                             "image with (repeatable), for a private registry")


def run(args) -> None:
    output = compile_pipeline(args.output, args.image, parse_params(args.param), args.s3_credentials,
                              args.image_pull_secret)
    print(f"wrote {output}; submit it with `python -m pipeline submit --package {output} ...`")
