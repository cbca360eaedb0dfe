"""`python -m pipeline submit` against a STUBBED Kubeflow Pipelines API server on 127.0.0.1
(tests/pipeline/fake_kfp_api.py; no Kubeflow here): credentials reach it the ways kfp sends them, and 401 /
403 / 404 / a login redirect / a closed port are each one line naming the fix, exit 2, no dump."""

from __future__ import annotations

import socket
import time

import pytest

from pipeline.__main__ import main
from pipeline.compile import COMPILED_PATH
from tests.pipeline.fake_kfp_api import FakeKfpApi

PACKAGE = ["--package", str(COMPILED_PATH)]  # the repo's copy; submit's default is what `compile` writes


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch):
    for name in ("KF_PIPELINES_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")  # not in a pod


def _submit(host: str, *extra: str) -> tuple[int, float]:
    started = time.monotonic()
    code = main(["submit", *PACKAGE, "--host", host, "--param", "num_nodes=1", *extra])
    return code, time.monotonic() - started


@pytest.mark.parametrize("status, expected", [
    (401, "refused the credentials (401) (no credentials sent); pass a token (--token-file FILE or "
          "$KF_PIPELINES_TOKEN"),
    (403, "forbids this account to create runs in namespace team-a (403) (sent: $KF_PIPELINES_TOKEN); ask the "
          "profile's owner"),
    (404, "no Kubeflow Pipelines API at"),
    (302, "redirects to a login page (302): a front door (Dex, oauth2-proxy) wants a session"),
])
def test_refusals_are_one_line_naming_the_fix(status, expected, capsys, monkeypatch):
    if status == 403:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok-403")
    with FakeKfpApi(status=status, location="/dex/auth?client_id=kubeflow-oidc-authservice") as api:  # stub KFP
        code, seconds = _submit(api.host, "--namespace", "team-a")
    captured = capsys.readouterr()
    print(f"{status}: refused after {seconds:.2f}s")
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out and "HTTP response body" not in captured.err + captured.out
    assert [r["path"] for r in api.requests] == ["/apis/v2beta1/healthz"]  # nothing uploaded
    assert seconds < 15  # imports the pipeline's components to check --param names


def test_a_closed_port_is_one_line(capsys):
    with socket.socket() as probe:  # a loopback port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, seconds = _submit(f"http://127.0.0.1:{port}")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: could not reach Kubeflow Pipelines at --host http://127.0.0.1:{port}")
    assert len(err.strip().splitlines()) == 1 and seconds < 15


def test_an_unknown_param_is_refused_before_any_request(capsys):
    with FakeKfpApi() as api:  # stub KFP
        code = main(["submit", *PACKAGE, "--host", api.host, "--param", "num_nodez=2"])
    assert code == 2 and "num_nodez: not a pipeline parameter" in capsys.readouterr().err
    assert api.requests == []


@pytest.mark.parametrize("param, expected", [
    ("gpus_per_node=four", 'gpus_per_node="four" is not valid: gpus_per_node takes a whole number'),
    ("job_backend=TrainJob", "job_backend=TrainJob is not valid: use one of pytorchjob, trainjob"),
])
def test_a_bad_param_value_is_refused_before_any_request(param, expected, capsys):
    """As compile checks them (once such a run was created, to fail at a later step)."""
    with FakeKfpApi() as api:  # stub KFP
        code = main(["submit", "--host", api.host, "--param", param])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --param ") and expected in err and len(err.strip().splitlines()) == 1
    assert api.requests == []


def test_a_token_and_cookies_reach_every_request_and_the_run_is_created(tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    with FakeKfpApi(multi_user=True) as api:  # stub KFP
        code = main(["submit", *PACKAGE, "--host", api.host, "--param", "num_nodes=1", "--token-file", str(token_file),
                     "--cookies", "authservice_session=abc"])
        assert code == 2 and "is multi-user: pass --namespace" in capsys.readouterr().err
        code = main(["submit", *PACKAGE, "--host", api.host, "--param", "num_nodes=1", "--token-file", str(token_file),
                     "--cookies", "authservice_session=abc", "--namespace", "team-a"])
    out = capsys.readouterr().out
    assert code == 0 and f"created run run-1 on {api.host}" in out
    assert any(r["method"] == "POST" and r["path"].startswith("/apis/v2beta1/runs") for r in api.requests)
    assert {r["authorization"] for r in api.requests} == {"Bearer tok-123"}
    assert {r["cookie"] for r in api.requests} == {"authservice_session=abc"}


def test_without_host_kfp_goes_through_the_kubeconfigs_api_server_with_its_credentials(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    with FakeKfpApi() as api:  # stub KFP, reached as through the API server's service proxy
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": api.host}}],
            "users": [{"name": "me", "user": {"token": "kube-tok"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me"}}]}))
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        code = main(["submit", *PACKAGE, "--param", "num_nodes=1"])
    assert code == 0 and "created run run-1" in capsys.readouterr().out
    assert all(r["proxied"] for r in api.requests) and {r["authorization"] for r in api.requests} == {"Bearer kube-tok"}


def test_without_host_or_kubeconfig_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", "/nonexistent/kubeconfig")
    code = main(["submit", *PACKAGE, "--param", "num_nodes=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no --host, and no Kubernetes credentials") and "--host URL" in err


def test_the_default_package_is_what_compile_writes_and_its_absence_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no build/ here
    with FakeKfpApi() as api:  # stub KFP
        code = main(["submit", "--host", api.host])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: build/unmix_swav_pipeline.yaml does not exist; "
                                                              "run `python -m pipeline compile --image"), err
    assert api.requests == []


def test_an_empty_s3_secret_name_needs_a_package_compiled_for_pod_identity(tmp_path, capsys):
    pod_identity = tmp_path / "pod-identity.yaml"
    assert main(["compile", "--output", str(pod_identity), "--s3-credentials", "pod-identity"]) == 0
    capsys.readouterr()
    with FakeKfpApi() as api:  # stub KFP
        refused = main(["submit", *PACKAGE, "--host", api.host, "--param", "s3_secret_name="])
        err = capsys.readouterr().err.strip().splitlines()
        assert api.requests == []  # refused before any request
        created = main(["submit", "--package", str(pod_identity), "--host", api.host])
    assert refused == 2 and len(err) == 1 and "mounts that Secret in every step" in err[0] and (
        "--s3-credentials pod-identity" in err[0]), err
    assert created == 0 and "created run run-1" in capsys.readouterr().out


def test_a_file_that_is_not_a_compiled_pipeline_is_one_line(tmp_path, capsys):
    package = tmp_path / "notes.yaml"
    package.write_text("just: notes\n")
    assert main(["submit", "--package", str(package), "--host", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a pipeline compiled by `python -m pipeline compile`" in err[0], err


def test_a_namespace_that_is_no_namespace_name_is_refused_before_any_request(capsys):
    with FakeKfpApi() as api:  # stub KFP
        code = main(["submit", *PACKAGE, "--host", api.host, "--namespace", "Team_A"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --namespace 'Team_A' is not valid"), err
    assert api.requests == []
