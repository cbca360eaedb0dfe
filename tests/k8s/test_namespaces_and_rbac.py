"""Namespaces and accounts as Kubeflow users apply them: nothing a user applies with `-n` names a namespace, what
needs cluster-admin (the ClusterTrainingRuntime) is apart, and the multi-user binding gives the profile's
`default-editor` exactly what the launcher calls (recorded from a real launcher run against the stubbed API server
on loopback, tests/launch/fake_kube_api.py: no cluster exists here)."""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from launch.backends import build_job
from launch.kube import JobLauncher, job_api
from launch.spec import JobSpec
from pipeline.__main__ import main as pipeline_main
from tests.k8s.kustomize import K8S, NAMESPACED, PROFILE, V1, render
from tests.launch.fake_kube_api import FakeKubeApi, condition

ACCESS = {"trainjob": K8S / "trainer-v2" / "access", "pytorchjob": V1 / "access"}
PRETRAIN = ["--data_path", "s3://b/staged", "--dump_path", "s3://b/runs/1/pretrain"]


@pytest.mark.parametrize("folder", NAMESPACED, ids=lambda path: str(path.relative_to(K8S)))
@pytest.mark.slow
def test_nothing_applied_with_n_names_a_namespace_or_needs_cluster_admin(folder):
    for resource in render(folder):
        assert "namespace" not in resource["metadata"], (folder, resource["metadata"]["name"])
        assert not resource["kind"].startswith("Cluster"), (folder, resource["kind"])
        for subject in resource.get("subjects", []):
            assert "namespace" not in subject  # a RoleBinding's ServiceAccount: the binding's own namespace


def test_the_secret_template_names_no_namespace():
    (secret,) = yaml.safe_load_all((K8S / "s3-secret.template.yaml").read_text(encoding="utf-8"))
    assert "namespace" not in secret["metadata"]


@pytest.mark.slow
def test_the_cluster_folder_holds_only_the_cluster_scoped_runtime():
    resources = render(K8S / "trainer-v2" / "cluster")
    assert [(r["kind"], r["metadata"]["name"]) for r in resources] == [("ClusterTrainingRuntime", "unmix-swav-torch")]
    assert "namespace" not in resources[0]["metadata"]


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
def test_job_manifest_leaves_the_namespace_out_unless_given(backend, capsys):
    assert pipeline_main(["job-manifest", "pretrain", "--backend", backend, "--no-check", "--", *PRETRAIN]) == 0
    assert "namespace" not in yaml.safe_load(capsys.readouterr().out)["metadata"]
    assert pipeline_main(["job-manifest", "pretrain", "--backend", backend, "--no-check", "--namespace", "team-a",
                          "--", *PRETRAIN]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["namespace"] == "team-a"


def _rule_of(method: str, path: str) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of one API request, as the RBAC authorizer reads it."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[0] == "namespaces", path  # the launcher only makes namespaced calls
    resource, name, sub = rest[2], rest[3] if len(rest) > 3 else "", rest[4] if len(rest) > 4 else ""
    verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}.get(method)
    verb = verb or ("get" if name else "list")
    return group, f"{resource}/{sub}" if sub else resource, verb


def _launcher_calls(backend: str) -> set[tuple[str, str, str]]:
    """Every request one launching step makes: own the job by the run, create, follow the log to the end, and
    delete (what a cancelled step does)."""
    with FakeKubeApi(backend=backend) as api:
        done = condition("Succeeded") if backend == "pytorchjob" else condition("Complete", "JobsCompleted")
        api.statuses = [{"conditions": [condition("Created", "JobsCreationSucceeded")]},
                        {"conditions": [done]}]
        api.master_log = ["epoch 0", "done"]
        spec = JobSpec(command="pretrain", name="unmix-pretrain-rbac", namespace=api.namespace, image="t",
                       num_nodes=2, gpus_per_node=0, job_backend=backend)
        launcher = JobLauncher(job_api(backend, api_client=k8s.ApiClient(api.configuration()),
                                       namespace=api.namespace), poll_interval_s=0.05, out=io.StringIO())
        job = build_job(spec)
        launcher.own_by_run(job, api.step_pod_name)
        launcher.run(job, timeout_s=30, max_restarts=3)
        launcher.delete(spec.name, spec.namespace)
        return {_rule_of(method, path) for method, path in api.requests}


def _granted(resources: list[dict[str, Any]], account: str) -> set[tuple[str, str, str]]:
    roles = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Role"}
    granted = set()
    for binding in (r for r in resources if r["kind"] == "RoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            assert binding["roleRef"]["kind"] == "Role"
            for rule in roles[binding["roleRef"]["name"]]["rules"]:
                granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
@pytest.mark.slow
def test_default_editor_in_a_profile_may_make_every_call_the_launcher_makes(backend, tmp_path):
    calls = _launcher_calls(backend)
    kinds = {resource for _, resource, _ in calls}
    assert {"pods", "pods/log", "trainjobs" if backend == "trainjob" else "pytorchjobs"} <= kinds
    assert {verb for _, _, verb in calls} >= {"create", "get", "list", "delete"}
    # What a profile owner applies in the profile's namespace: the access folder, then the binding.
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ACCESS[backend], tmp_path), os.path.relpath(PROFILE, tmp_path)]}))
    resources = render(tmp_path)
    for account in ("default-editor", "pipeline-runner", "unmix-swav-launcher"):
        missing = calls - _granted(resources, account)
        assert not missing, f"{account} may not make the launcher's calls {sorted(missing)}"
    (binding,) = [r for r in render(PROFILE) if r["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor"},
                                   {"kind": "ServiceAccount", "name": "pipeline-runner"}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "unmix-swav-launcher"}
