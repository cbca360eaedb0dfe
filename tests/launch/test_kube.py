"""The cluster launcher's create / adopt / stream / restart-count / fail / cancel logic against the real
Kubernetes and kubeflow-training clients talking HTTP to a STUBBED API server on 127.0.0.1
(tests/launch/fake_kube_api.py): there is no cluster here, so job status transitions, pod recreations and
the master's log are scripted by each test. PyTorchJobs (Training Operator v1) first, then TrainJobs
(Kubeflow Trainer v2)."""

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
from kubernetes import client as k8s

from launch.backends import build_job
from launch.errors import JobFailed
from launch.kube import JobLauncher, PyTorchJobApi, TrainJobApi
from launch.pytorchjob import build_pytorchjob, to_manifest
from launch.spec import JobSpec
from tests.launch.fake_kube_api import FakeKubeApi, condition

REPO = Path(__file__).resolve().parents[2]


def _job(name: str = "unmix-pretrain-test", namespace: str = "ml", max_restarts: int = 3):
    return build_pytorchjob(JobSpec(command="pretrain", name=name, namespace=namespace, image="trainer:test",
                                    trainer_args=("--epochs", "1"), num_nodes=2, gpus_per_node=4,
                                    max_restarts=max_restarts))


def _launcher(api: FakeKubeApi, out: io.StringIO) -> JobLauncher:
    client = TrainingClient(client_configuration=api.configuration(), namespace=api.namespace)
    return JobLauncher(PyTorchJobApi(client), poll_interval_s=0.05, out=out)


def test_success_creates_the_job_streams_the_master_log_and_returns():
    with FakeKubeApi() as api:
        api.master_log = ["epoch 0 loss 8.0", "epoch 1 loss 7.1", "done"]
        api.statuses = [{"conditions": [condition("Created")]}, {"conditions": [condition("Running")]},
                        {"conditions": [condition("Running")]}, {"conditions": [condition("Running")]},
                        {"conditions": [condition("Running"), condition("Succeeded")]}]
        out = io.StringIO()
        finished = _launcher(api, out).run(_job(), timeout_s=30, max_restarts=3)
    assert finished.metadata.name == "unmix-pretrain-test"
    assert [job["metadata"]["name"] for job in api.created] == ["unmix-pretrain-test"]
    created = api.created[0]
    assert created["kind"] == "PyTorchJob" and created["spec"]["nprocPerNode"] == "4"
    assert set(created["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    log = out.getvalue()
    assert "[unmix-pretrain-test-master-0] epoch 1 loss 7.1" in log
    assert "Succeeded" in log and "restart" not in log
    assert api.deleted == []


def test_a_permanent_failure_ends_with_the_trainers_exit_code_and_the_operators_reason():
    with FakeKubeApi() as api:
        api.master_phase = "Failed"
        api.master_terminated = {"exitCode": 2, "reason": "Error"}
        api.statuses = [{"conditions": [condition("Running")]},
                        {"conditions": [condition("Running"), condition(
                            "Failed", "PyTorchJobFailed",
                            'job "unmix-pretrain-test" is failing because "Master" replica(s) failed.')]}]
        with pytest.raises(JobFailed) as failure:
            _launcher(api, io.StringIO()).run(_job(), timeout_s=30, max_restarts=3)
    assert failure.value.exit_code == 2
    message = str(failure.value)
    assert "after 0 restart(s)" in message and '"Master" replica(s) failed' in message
    assert "exit code 2" in message


def test_an_oom_killed_master_is_named_with_its_exit_code():
    with FakeKubeApi() as api:
        api.master_phase = "Failed"
        api.master_terminated = {"exitCode": 137, "reason": "OOMKilled"}
        api.statuses = [{"conditions": [condition("Running"), condition("Failed", "PyTorchJobFailed", "x")]}]
        with pytest.raises(JobFailed) as failure:
            _launcher(api, io.StringIO()).run(_job(), timeout_s=30, max_restarts=3)
    assert failure.value.exit_code == 137 and "OOMKilled" in str(failure.value)


def test_restarts_are_counted_from_recreated_pods_and_logged():
    """restartPolicy ExitCode: the operator deletes a pod that failed with a retryable code and creates it
    again under the same name (a new uid), with a Restarting condition in between."""
    with FakeKubeApi() as api:
        restarting = condition("Restarting", "PyTorchJobRestarting",
                               "job unmix-pretrain-test is restarting because Worker replica(s) failed.")
        api.statuses = [{"conditions": [condition("Running")], "_generation": 0},
                        {"conditions": [condition("Running"), restarting], "_generation": 1},
                        {"conditions": [condition("Running")], "_generation": 1},
                        {"conditions": [condition("Running"), condition("Succeeded")], "_generation": 1}]
        out = io.StringIO()
        _launcher(api, out).run(_job(), timeout_s=30, max_restarts=3)
    log = out.getvalue()
    assert "restart 1/3: job unmix-pretrain-test is restarting because Worker replica(s) failed." in log
    assert "succeeded after 1 restart(s)" in log and "restart 2/" not in log


def test_restarts_over_the_budget_delete_the_job_and_fail_the_step():
    """The operator does not bound ExitCode restarts (its backoffLimit counts container restarts, which
    pods with restartPolicy Never never have): the launcher does."""
    with FakeKubeApi() as api:
        api.statuses = [{"conditions": [condition("Running")], "_generation": generation}
                        for generation in range(6)]
        with pytest.raises(JobFailed, match="restarted 2 times, over its budget of max_restarts=1"):
            _launcher(api, io.StringIO()).run(_job(max_restarts=1), timeout_s=30, max_restarts=1)
    assert api.deleted == ["unmix-pretrain-test"]


def test_a_job_held_by_its_queue_is_waited_for():
    with FakeKubeApi() as api:
        api.statuses = [{"conditions": [condition("Created"), condition("Suspended", "JobSuspended")]},
                        {"conditions": [condition("Created"), condition("Suspended", "JobSuspended")]},
                        {"conditions": [condition("Running"), condition("Succeeded")]}]
        out = io.StringIO()
        _launcher(api, out).run(_job(), timeout_s=30, max_restarts=3)
    assert "Suspended (waiting for its queue to admit it)" in out.getvalue()


def test_timeout_is_honoured_and_deletes_the_job():
    with FakeKubeApi() as api:
        api.statuses = [{"conditions": [condition("Running")]}]
        started = time.monotonic()
        with pytest.raises(JobFailed, match="did not finish within 1s"):
            _launcher(api, io.StringIO()).run(_job(), timeout_s=1.0, max_restarts=3)
        waited = time.monotonic() - started
    assert 1.0 <= waited < 10.0
    assert api.deleted == ["unmix-pretrain-test"]


def test_a_retried_step_follows_its_existing_job_instead_of_creating_another():
    with FakeKubeApi() as api:
        api.jobs["unmix-pretrain-test"] = to_manifest(_job())  # left by the step's first attempt
        api.statuses = [{"conditions": [condition("Running"), condition("Succeeded")]}]
        out = io.StringIO()
        _launcher(api, out).run(_job(), timeout_s=30, max_restarts=3)
    assert api.created == []
    assert "exists already" in out.getvalue()


CANCEL_SCRIPT = """
import sys
from kubernetes import client as k8s
from launch.backends import build_job
from launch.kube import JobLauncher, job_api
from launch.spec import JobSpec

configuration = k8s.Configuration()
configuration.host, backend = sys.argv[1], sys.argv[2]
job = build_job(JobSpec(command="pretrain", name="unmix-pretrain-cancel", namespace="ml", image="t", num_nodes=1,
                        gpus_per_node=0, job_backend=backend))
api = job_api(backend, api_client=k8s.ApiClient(configuration), namespace="ml")
JobLauncher(api, poll_interval_s=0.05).run(job, timeout_s=300, max_restarts=3)
"""


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
@pytest.mark.slow
def test_sigterm_from_a_cancelled_run_deletes_the_job(backend):
    with FakeKubeApi(backend=backend) as api:
        api.statuses = [{"conditions": [condition("Running" if backend == "pytorchjob" else "Created")]}]
        process = subprocess.Popen([sys.executable, "-c", CANCEL_SCRIPT, api.host, backend], cwd=REPO,
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


def _trainjob(name: str = "unmix-pretrain-v2", max_restarts: int = 3):
    return build_job(JobSpec(command="pretrain", name=name, namespace="ml", image="trainer:test",
                             job_backend="trainjob", trainer_args=("--epochs", "1"), num_nodes=2, gpus_per_node=4,
                             max_restarts=max_restarts))


def _trainjob_launcher(api: FakeKubeApi, out: io.StringIO) -> JobLauncher:
    return JobLauncher(TrainJobApi(k8s.ApiClient(api.configuration())), poll_interval_s=0.05, out=out)


def test_a_trainjob_is_created_followed_through_its_node_0_log_and_complete():
    with FakeKubeApi(backend="trainjob") as api:
        api.master_log = ["epoch 0 loss 8.0", "done"]
        api.statuses = [{"conditions": []}, {"conditions": [condition("Created", "JobsCreationSucceeded")]},
                        {"conditions": [condition("Created", "JobsCreationSucceeded")]},
                        {"conditions": [condition("Created", "JobsCreationSucceeded"),
                                        condition("Complete", "JobsCompleted", "jobset completed successfully")]}]
        out = io.StringIO()
        _trainjob_launcher(api, out).run(_trainjob(), timeout_s=30, max_restarts=3)
    (created,) = api.created
    assert created["kind"] == "TrainJob" and created["spec"]["trainer"]["numNodes"] == 2
    assert ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs") in api.requests
    log = out.getvalue()
    assert "created TrainJob ml/unmix-pretrain-v2" in log and "TrainJob ml/unmix-pretrain-v2: Complete" in log
    assert "[unmix-pretrain-v2-node-0-0-aaaaa] epoch 0 loss 8.0" in log and "restart" not in log
    assert api.deleted == []


def test_a_trainjob_failed_by_a_permanent_exit_ends_with_the_trainers_code_and_the_jobsets_reason():
    with FakeKubeApi(backend="trainjob") as api:
        api.master_phase = "Failed"
        api.master_terminated = {"exitCode": 2, "reason": "Error"}
        api.statuses = [{"conditions": [condition("Failed", "FailedJobs",
                                                  'jobset failed: job "unmix-pretrain-v2-node-0" failed: '
                                                  "PodFailurePolicy")]}]
        with pytest.raises(JobFailed) as failure:
            _trainjob_launcher(api, io.StringIO()).run(_trainjob(), timeout_s=30, max_restarts=3)
    assert failure.value.exit_code == 2
    message = str(failure.value)
    assert message.startswith("TrainJob ml/unmix-pretrain-v2 failed after 0 restart(s): FailedJobs")
    assert "PodFailurePolicy" in message and "unmix-pretrain-v2-node-0-0-aaaaa: Error, exit code 2" in message


def test_jobset_restarts_are_counted_from_the_restart_attempt_label_and_bounded_by_the_budget():
    with FakeKubeApi(backend="trainjob") as api:
        api.statuses = [{"conditions": [], "_generation": 0}, {"conditions": [], "_generation": 1},
                        {"conditions": [condition("Complete", "JobsCompleted")], "_generation": 1}]
        out = io.StringIO()
        _trainjob_launcher(api, out).run(_trainjob(), timeout_s=30, max_restarts=3)
    log = out.getvalue()
    assert "restart 1/3: the pods of the job were recreated" in log and "succeeded after 1 restart(s)" in log
    with FakeKubeApi(backend="trainjob") as api:
        api.statuses = [{"conditions": [], "_generation": generation} for generation in range(4)]
        with pytest.raises(JobFailed, match="restarted 2 times, over its budget of max_restarts=1"):
            _trainjob_launcher(api, io.StringIO()).run(_trainjob(max_restarts=1), timeout_s=30, max_restarts=1)
    assert api.deleted == ["unmix-pretrain-v2"]


def test_a_queued_trainjob_is_waited_for_adopted_on_retry_and_deleted_on_timeout():
    with FakeKubeApi(backend="trainjob") as api:
        api.jobs["unmix-pretrain-v2"] = _trainjob().to_dict()  # left by the step's first attempt
        api.statuses = [{"conditions": [condition("Suspended", "Suspended")]}]
        out = io.StringIO()
        with pytest.raises(JobFailed, match="did not finish within 1s"):
            _trainjob_launcher(api, out).run(_trainjob(), timeout_s=1.0, max_restarts=3)
    assert api.created == [] and "exists already" in out.getvalue()
    assert "Suspended (waiting for its queue to admit it)" in out.getvalue()
    assert api.deleted == ["unmix-pretrain-v2"]


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_the_job_is_owned_by_the_run_so_deleting_the_run_deletes_it_but_losing_the_step_pod_does_not(backend):
    build, launcher_for = {"pytorchjob": (_job, _launcher), "trainjob": (_trainjob, _trainjob_launcher)}[backend]
    done = condition("Succeeded") if backend == "pytorchjob" else condition("Complete", "JobsCompleted")
    with FakeKubeApi(backend=backend) as api:
        api.statuses = [{"conditions": [done]}]
        launcher = launcher_for(api, io.StringIO())
        job = build()
        launcher.own_by_run(job, api.step_pod_name)
        launcher.run(job, timeout_s=30, max_restarts=3)
        (owner,) = api.created[0]["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "unmix-swav-x7k2p",
                         "uid": api.step_pod_owner["uid"]}  # not the pod, not a controller reference
        other = build(name="unmix-pretrain-other")
        launcher.own_by_run(other, "not-a-pod")  # outside a pod: no owner, the SIGTERM path still deletes
        assert other.metadata.owner_references is None
