"""`python -m pipeline compile`: write the pipeline's IR YAML (the copy kept in the repo is checked)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kfp import compiler

from components.image import TRAINER_IMAGE

COMPILED_PATH = Path(__file__).with_name("unmix_swav_pipeline.yaml")


def compile_pipeline(output: Path = COMPILED_PATH, image: str = TRAINER_IMAGE) -> Path:
    """Compile; `image` replaces the default trainer image in every step and in the `image` parameter."""
    from pipeline.dag import unmix_swav_pipeline

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / "pipeline.yaml"
        compiler.Compiler().compile(unmix_swav_pipeline, str(scratch))
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


def run(args) -> None:
    print(f"wrote {compile_pipeline(args.output, args.image)}")
