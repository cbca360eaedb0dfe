"""The Dockerfiles pass hadolint (settings and written exceptions in .hadolint.yaml) and keep the
contract the manifests rely on: non-root UID 10001, the trainer packages installed, pinned deps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "Dockerfile", REPO / "images" / "Dockerfile.cpu"]
HADOLINT = Path(sys.executable).parent / "hadolint"


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--config", str(REPO / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = _hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


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
