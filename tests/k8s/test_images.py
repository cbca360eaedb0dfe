"""The Dockerfiles pass hadolint (settings and written exceptions in .hadolint.yaml) and keep the
contract the manifests rely on: non-root UID 10001, the trainer packages installed, pinned deps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "Dockerfile", REPO / "images" / "Dockerfile.cpu"]
HADOLINT = Path(sys.executable).parent / "hadolint"


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--config", str(REPO / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
@pytest.mark.slow
def test_dockerfile_passes_hadolint(dockerfile):
    result = _hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = _hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout  # `latest` is refused


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_runs_as_the_manifests_non_root_user(dockerfile):
    text = dockerfile.read_text()
    assert "USER 10001:10001" in text
    assert "--constraint images/constraints.txt ." in text
    assert "COPY launch/ launch/" in text  # the job's pods run python -m launch.torchrun
    assert 'python -c "import trainer.cli, launch.kube, launch.torchrun, components.runtime, kfp.dsl.executor_main"' \
        in text


def test_constraints_pin_exact_versions_of_every_runtime_dependency():
    pins = {}
    for line in (REPO / "images" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"{line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    for package in ("kfp", "kfp-kubernetes", "kubeflow-training", "s3fs", "transformers", "pycocotools"):
        assert package in pins, f"{package} is not pinned in images/constraints.txt"


def _copy_sources(dockerfile: Path) -> list[str]:
    """The sources of every COPY without --from (those come from the build context)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_copy_source_is_in_the_build_context(dockerfile):
    """The build context as the docker SDK computes it from .dockerignore (its implementation of the
    engine's rules): every file a COPY names, or every file under a folder it names, is sent."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(REPO), patterns, dockerfile=str(dockerfile.relative_to(REPO)))
    sources = _copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing"
    for source in sources:
        folder = source.rstrip("/")
        if (REPO / folder).is_dir():
            tracked = [path.relative_to(REPO).as_posix() for path in (REPO / folder).rglob("*.py")
                       if "__pycache__" not in path.parts]
            assert tracked and all(path in context for path in tracked), \
                f"{dockerfile.name}: COPY {source} but .dockerignore keeps it out of the build context"
        else:
            assert folder in context, f"{dockerfile.name}: COPY {source} but it is not in the build context"
