"""`python -m pipeline preflight` as a user runs it: a real process whose KUBECONFIG points at a STUBBED
Kubernetes API server on 127.0.0.1 (tests/launch/fake_kube_api.py; no cluster here), or at a closed port.
Exit 0 with a line per check on a complete cluster; exit 2, the missing piece's line and one `error:` line,
no traceback, otherwise. Each test prints the wall time of the whole command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.launch.fake_kube_api import FakeKubeApi

REPO = Path(__file__).resolve().parents[2]


def _kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "stub-token"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me", "namespace": "ml"}}]}))
    return path


def _preflight(kubeconfig: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(kubeconfig), PYTHONPATH=str(REPO))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline", "preflight", "--backend", "trainjob", *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    print(f"preflight exited {result.returncode} after {seconds:.2f}s (process start and imports included)")
    return result, seconds


@pytest.mark.slow
def test_a_complete_cluster_passes_and_a_missing_runtime_fails_with_its_line(tmp_path):
    with FakeKubeApi() as api:  # stub API server
        api.complete_cluster()
        kubeconfig = _kubeconfig(tmp_path, api.host)
        passed, _ = _preflight(kubeconfig, "--queue", "team-a")  # the namespace comes from the context
        api.objects.pop("/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/unmix-swav-torch")
        failed, _ = _preflight(kubeconfig, "--queue", "team-a")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "ok: [runtime] ClusterTrainingRuntime unmix-swav-torch" in passed.stdout
    assert passed.stdout.strip().endswith("the cluster is ready for trainjob jobs in namespace ml")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "missing: [runtime] ClusterTrainingRuntime unmix-swav-torch does not exist" in failed.stdout
    assert failed.stderr.strip().splitlines() == [
        f"error: preflight: 1 of {len(failed.stdout.strip().splitlines())} check(s) failed in namespace ml: "
        "runtime (fixes above)"]
    assert api.requests[0][1] == "/version"


@pytest.mark.slow
def test_a_closed_port_fails_in_seconds_without_a_traceback(tmp_path):
    with socket.socket() as probe:  # a loopback port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result, seconds = _preflight(_kubeconfig(tmp_path, f"http://127.0.0.1:{port}"), "--request-timeout", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert f"missing: [api] the Kubernetes API at http://127.0.0.1:{port} did not answer within 4s" in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_without_credentials_it_says_so_in_one_line(tmp_path):
    result, _ = _preflight(tmp_path / "absent-kubeconfig")
    assert result.returncode == 2 and result.stderr.startswith("error: no Kubernetes credentials")
    assert len(result.stderr.strip().splitlines()) == 1
