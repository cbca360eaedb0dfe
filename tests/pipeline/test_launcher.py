"""The launcher's wait / stream / fail / cancel logic against the real Kubernetes and kubeflow-training
clients talking HTTP to a STUBBED API server on 127.0.0.1 (tests/pipeline/fake_kube_api.py): there is
no cluster here, so job status transitions and the master's log are scripted by each test."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubeflow.training import TrainingClient

from pipeline.launcher import PyTorchJobFailed, PyTorchJobLauncher
from pipeline.pytorchjob import PretrainJobSpec, build_pytorchjob, to_manifest
from tests.pipeline.fake_kube_api import FakeKubeApi, condition

REPO = Path(__file__).resolve().parents[2]


def _job(name: str = "unmix-pretrain-test", namespace: str = "ml"):
    return build_pytorchjob(PretrainJobSpec(name=name, namespace=namespace, image="trainer:test",
                                            trainer_args=["--epochs", "1"], num_nodes=2, gpus_per_node=4))


def _launcher(api: FakeKubeApi, out: io.StringIO) -> PyTorchJobLauncher:
    client = TrainingClient(client_configuration=api.configuration(), namespace=api.namespace)
    return PyTorchJobLauncher(client, poll_interval_s=0.05, out=out)


def test_success_creates_the_job_streams_the_master_log_and_returns():
    with FakeKubeApi() as api:
        api.master_log = ["epoch 0 loss 8.0", "epoch 1 loss 7.1", "done"]
        api.statuses = [{"conditions": [condition("Created")]}, {"conditions": [condition("Running")]},
                        {"conditions": [condition("Running")]}, {"conditions": [condition("Running")]},
                        {"conditions": [condition("Running"), condition("Succeeded")]}]
        out = io.StringIO()
        finished = _launcher(api, out).run(_job(), timeout_s=30)
    assert finished.metadata.name == "unmix-pretrain-test"
    assert [job["metadata"]["name"] for job in api.created] == ["unmix-pretrain-test"]
    created = api.created[0]
    assert created["kind"] == "PyTorchJob" and created["spec"]["nprocPerNode"] == "4"
    assert set(created["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    log = out.getvalue()
    assert "[unmix-pretrain-test-master-0] epoch 1 loss 7.1" in log
    assert "Succeeded" in log
    assert api.deleted == []


def test_failure_raises_with_the_operators_reason_and_the_master_exit():
    with FakeKubeApi() as api:
        api.master_phase = "Failed"
        api.master_terminated = {"exitCode": 137, "reason": "OOMKilled"}
        api.statuses = [{"conditions": [condition("Running")]},
                        {"conditions": [condition("Running"), condition(
                            "Failed", "PyTorchJobFailed",
                            "PyTorchJob ml/unmix-pretrain-test is failed because 1 Master replica(s) failed.")]}]
        with pytest.raises(PyTorchJobFailed) as failure:
            _launcher(api, io.StringIO()).run(_job(), timeout_s=30)
    message = str(failure.value)
    assert "1 Master replica(s) failed" in message
    assert "OOMKilled" in message and "exit code 137" in message


def test_timeout_is_honoured_and_deletes_the_job():
    with FakeKubeApi() as api:
        api.statuses = [{"conditions": [condition("Running")]}]
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not finish within 1s"):
            _launcher(api, io.StringIO()).run(_job(), timeout_s=1.0)
        waited = time.monotonic() - started
    assert 1.0 <= waited < 10.0
    assert api.deleted == ["unmix-pretrain-test"]


def test_the_job_is_owned_by_the_step_pod_so_deleting_the_pod_deletes_the_job():
    with FakeKubeApi() as api:
        api.statuses = [{"conditions": [condition("Succeeded")]}]
        launcher = _launcher(api, io.StringIO())
        job = _job()
        launcher.own_by_pod(job, api.step_pod_name)
        launcher.run(job, timeout_s=30)
        (owner,) = api.created[0]["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "v1", "kind": "Pod", "name": api.step_pod_name, "uid": api.step_pod_uid}
        other = _job(name="unmix-pretrain-other")
        launcher.own_by_pod(other, "not-a-pod")  # outside a pod: no owner, the SIGTERM path still deletes
        assert other.metadata.owner_references is None


def test_a_retried_step_follows_its_existing_job_instead_of_creating_another():
    with FakeKubeApi() as api:
        api.jobs["unmix-pretrain-test"] = to_manifest(_job())  # left by the step's first attempt
        api.statuses = [{"conditions": [condition("Running"), condition("Succeeded")]}]
        out = io.StringIO()
        _launcher(api, out).run(_job(), timeout_s=30)
    assert api.created == []
    assert "exists already" in out.getvalue()


CANCEL_SCRIPT = """
import sys
from kubeflow.training import TrainingClient
from kubernetes import client as k8s
from pipeline.launcher import PyTorchJobLauncher
from pipeline.pytorchjob import PretrainJobSpec, build_pytorchjob

configuration = k8s.Configuration()
configuration.host = sys.argv[1]
job = build_pytorchjob(PretrainJobSpec(name="unmix-pretrain-cancel", namespace="ml", image="t",
                                       trainer_args=[], num_nodes=1, gpus_per_node=0))
client = TrainingClient(client_configuration=configuration, namespace="ml")
PyTorchJobLauncher(client, poll_interval_s=0.05).run(job, timeout_s=300)
"""


def test_sigterm_from_a_cancelled_run_deletes_the_job():
    with FakeKubeApi() as api:
        api.statuses = [{"conditions": [condition("Running")]}]
        process = subprocess.Popen([sys.executable, "-c", CANCEL_SCRIPT, api.host], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 60
        while not api.created and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.created, "the launcher never created the job"
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode != 0, output
    assert api.deleted == ["unmix-pretrain-cancel"], output
    assert "step cancelled" in output
