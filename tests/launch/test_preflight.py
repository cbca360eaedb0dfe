"""The cluster preflight (launch.preflight, `python -m pipeline preflight`) against a STUBBED Kubernetes API
server on 127.0.0.1 (tests/launch/fake_kube_api.py; no cluster exists here): a complete cluster passes; a
cluster missing each piece in turn fails with one line naming that piece and its fix, within seconds; an
address where nothing listens fails within the stated bound. Each test prints how long the check took."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from launch.preflight import MAX_CALLS, PERMANENT_EXIT_CODES, PreflightOptions, run_checks, runtime_rule_problems
from launch.spec import JobSpec
from tests.launch.fake_kube_api import RUNTIME_YAML, FakeKubeApi

OPTIONS = PreflightOptions(namespace="ml", backend="trainjob", queue="team-a", gpus_per_node=8)


def _client(host: str) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = host
    return k8s.ApiClient(configuration)


def _check(api: FakeKubeApi, options: PreflightOptions = OPTIONS) -> tuple[list, float]:
    started = time.monotonic()
    findings = run_checks(options, _client(api.host))
    seconds = time.monotonic() - started
    print(f"preflight took {seconds:.2f}s: " + " | ".join(f.line() for f in findings if f.status != "ok"))
    return findings, seconds


def _failed(findings: list) -> list[str]:
    return [f.line() for f in findings if f.failed]


def test_a_complete_cluster_passes_every_check_in_a_bounded_number_of_calls():
    with FakeKubeApi() as api:  # stub API server
        api.complete_cluster()
        findings, seconds = _check(api)
    assert _failed(findings) == [] and all(f.status == "ok" for f in findings), [f.line() for f in findings]
    checks = {f.check for f in findings}
    assert checks == {"api", "crd", "runtime", "rbac", "secret", "queue", "gpu"}
    assert any("TrainJob served as trainer.kubeflow.org/v1alpha1" in f.message for f in findings)
    assert len(api.requests) <= MAX_CALLS
    assert seconds < 5


@pytest.mark.parametrize("piece, breaks, expected", [
    ("runtime", lambda api: api.objects.pop(
        "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/unmix-swav-torch"),
     "[runtime] ClusterTrainingRuntime unmix-swav-torch does not exist; a cluster admin applies "
     "k8s/trainer-v2/cluster"),
    ("crd", lambda api: api.groups.pop("trainer.kubeflow.org/v1alpha1"),
     "[crd] TrainJob (trainjobs.trainer.kubeflow.org) is not served; install Kubeflow Trainer v2"),
    ("jobset", lambda api: api.groups.pop("jobset.x-k8s.io/v1alpha2"),
     "[crd] JobSet (jobsets.jobset.x-k8s.io) is not served"),
    ("queue", lambda api: api.objects.pop("/apis/kueue.x-k8s.io/v1beta1/namespaces/ml/localqueues/team-a"),
     "[queue] LocalQueue team-a does not exist in namespace ml"),
    ("kueue", lambda api: api.groups.pop("kueue.x-k8s.io/v1beta1"),
     "queue 'team-a' is named but Kueue is not installed"),
    ("secret", lambda api: api.objects.pop("/api/v1/namespaces/ml/secrets/unmix-swav-s3"),
     "[secret] Secret unmix-swav-s3 does not exist in namespace ml"),
    ("secret keys", lambda api: api.objects["/api/v1/namespaces/ml/secrets/unmix-swav-s3"]["data"].pop(
        "AWS_SECRET_ACCESS_KEY"), "[secret] Secret ml/unmix-swav-s3 lacks AWS_SECRET_ACCESS_KEY"),
    ("rbac", lambda api: api.denied.update({"create trainjobs", "get pods/log"}),
     "[rbac] the launcher may not create trainjobs.trainer.kubeflow.org, get pods/log in namespace ml; apply "
     "k8s/trainer-v2/access"),
    ("gpu capacity", lambda api: api.nodes[0]["status"]["allocatable"].update({"nvidia.com/gpu": "4"}),
     "[gpu] no schedulable node offers nvidia.com/gpu >= 8"),
    ("gpu taint", lambda api: api.nodes[0]["spec"]["taints"].append({"key": "dedicated", "effect": "NoSchedule"}),
     "[gpu] no schedulable node offers nvidia.com/gpu >= 8"),
    ("exit-code rules", lambda api: api.objects[
        "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/unmix-swav-torch"]["spec"]["template"]["spec"][
        "replicatedJobs"][0]["template"]["spec"].pop("podFailurePolicy"),
     "[runtime] ClusterTrainingRuntime unmix-swav-torch lacks our exit-code rules: replicatedJob 'node' fails at "
     "once on exit codes none"),
])
def test_each_missing_piece_fails_with_its_own_line_in_seconds(piece, breaks, expected):
    with FakeKubeApi() as api:  # stub API server
        api.complete_cluster()
        breaks(api)
        findings, seconds = _check(api)
    failed = _failed(findings)
    assert len(failed) == 1 and expected in failed[0], (piece, failed)
    assert failed[0].startswith("missing: ") and "\n" not in failed[0]
    assert seconds < 5, piece


def test_a_v1_cluster_needs_the_pytorchjob_crd_and_its_own_rights():
    with FakeKubeApi() as api:  # stub API server
        api.complete_cluster()
        options = PreflightOptions(namespace="ml", backend="pytorchjob", gpus_per_node=8)
        findings, _ = _check(api, options)
        assert _failed(findings) == [] and any("PyTorchJob served as kubeflow.org/v1" in f.message for f in findings)
        assert not any(f.check == "runtime" for f in findings)
        api.groups.pop("kubeflow.org/v1")
        api.denied.add("delete pytorchjobs")
        findings, _ = _check(api, options)
    failed = _failed(findings)
    assert len(failed) == 2
    assert "PyTorchJob (pytorchjobs.kubeflow.org) is not served; install the Training Operator v1" in failed[0]
    assert "may not delete pytorchjobs.kubeflow.org" in failed[1]
    assert "apply k8s/training-operator-v1/access" in failed[1]


def test_what_the_launcher_may_not_read_is_a_warning_apart_from_a_missing_piece():
    with FakeKubeApi() as api:  # stub API server
        api.complete_cluster()
        api.denied.update({"list nodes", "get secrets"})
        api.forbidden_paths.update({"/api/v1/nodes", "/api/v1/namespaces/ml/secrets/unmix-swav-s3"})
        findings, _ = _check(api)
    assert _failed(findings) == []
    warnings = [f.line() for f in findings if f.status == "unverified"]
    assert any("not allowed to check the GPU capacity of the nodes (list nodes)" in w for w in warnings)
    assert any("not allowed to check Secret unmix-swav-s3 (get secrets)" in w for w in warnings)
    assert any(w.startswith("warning: [gpu] not allowed to check the nodes' nvidia.com/gpu") for w in warnings)
    assert any(w.startswith("warning: [secret] not allowed to check Secret unmix-swav-s3") for w in warnings)


def test_a_bare_api_server_fails_every_piece_without_a_traceback():
    with FakeKubeApi() as api:  # stub API server with nothing installed and no objects
        findings, seconds = _check(api)
    failed = _failed(findings)
    assert any("TrainJob (trainjobs.trainer.kubeflow.org) is not served" in line for line in failed)
    assert any("Kueue is not installed" in line for line in failed)
    assert any("Secret unmix-swav-s3 does not exist" in line for line in failed)
    assert any("no schedulable node offers nvidia.com/gpu >= 8" in line for line in failed)
    assert seconds < 5


@pytest.mark.parametrize("listens", [False, True], ids=["nothing-listens", "accepts-but-never-answers"])
def test_an_api_server_that_does_not_answer_fails_within_the_stated_bound(listens: bool):
    options = PreflightOptions(namespace="ml", backend="trainjob", request_timeout_s=1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        if listens:
            server.listen(8)  # the kernel accepts connections, but nothing reads or answers
        else:
            server.close()  # a loopback port that was free a moment ago: nothing listens there
        started = time.monotonic()
        findings = run_checks(options, _client(f"http://127.0.0.1:{port}"))
        seconds = time.monotonic() - started
    print(f"{'silent server' if listens else 'closed port'}: {seconds:.2f}s")
    (finding,) = findings
    assert finding.failed and finding.check == "api"
    assert f"127.0.0.1:{port} did not answer within 2s" in finding.message
    assert (options.request_timeout_s if listens else 0) <= seconds <= 2 * options.request_timeout_s  # no retries


def test_our_runtime_file_carries_exactly_the_permanent_exit_codes_of_is_retryable():
    runtime = yaml.safe_load(Path(RUNTIME_YAML).read_text(encoding="utf-8"))
    assert runtime_rule_problems(runtime) == []
    assert PERMANENT_EXIT_CODES == frozenset(range(1, 128))
    rule = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]["rules"][0]
    rule["onExitCodes"]["values"].remove(2)
    assert "fails at once on exit codes 1,3-127" in runtime_rule_problems(runtime)[0]


def test_options_from_a_jobspec_check_what_its_pods_get():
    spec = JobSpec(command="pretrain", name="unmix-pretrain-x", image="t", namespace="ml", job_backend="trainjob",
                   gpus_per_node=4, queue="team-a", s3_secret_name="my-s3", node_selector={"pool": "h100"},
                   tolerations=[{"key": "pool", "operator": "Exists", "effect": "NoSchedule"}])
    options = PreflightOptions.from_spec(spec)
    assert (options.namespace, options.backend, options.queue, options.s3_secret, options.gpus_per_node) == (
        "ml", "trainjob", "team-a", "my-s3", 4)
    with FakeKubeApi() as api:  # stub API server
        api.complete_cluster(secret="my-s3")
        findings, _ = _check(api, options)
        api.nodes[0]["metadata"]["labels"]["pool"] = "h100"
        api.nodes[0]["spec"]["taints"] = [{"key": "pool", "value": "h100", "effect": "NoSchedule"}]
        placed, _ = _check(api, options)
    assert [f.check for f in findings if f.failed] == ["gpu"]  # the GPU node is not in pool h100
    assert _failed(placed) == []


def test_credentials_the_api_server_refuses_are_one_line():
    with FakeKubeApi() as api:  # stub API server
        api.complete_cluster()
        api.forbidden_paths.update({"/version", "/apis"})
        findings, _ = _check(api)
    (finding,) = findings
    assert finding.failed and "refused the credentials (403" in finding.message and "renew" in finding.message
