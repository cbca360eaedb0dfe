"""Why a job is not running, and what ends the step early (launch.pending through launch.kube.JobLauncher), and
the cluster's refusals as user errors (exit 2, one line), against a STUBBED Kubernetes API server on
127.0.0.1 (tests/launch/fake_kube_api.py): the pods' status, the events and Kueue's Workloads are scripted
by each test, as a scheduler, a kubelet and Kueue would write them. Each test prints the seconds from the
job's creation to the failed launch."""

from __future__ import annotations

import io
import threading
import time

import pytest
from kubernetes import client as k8s

from launch.backends import build_job
from launch.errors import JobFailed
from launch.kube import JobLauncher, TrainJobApi
from launch.spec import JobSpec
from tests.launch.fake_kube_api import FakeKubeApi, condition, unknown_runtime_denial
from trainer.errors import EXIT_USER_ERROR, UserError

NAME = "unmix-pretrain-v2"
UNKNOWN_RUNTIME = unknown_runtime_denial("unmix-swav-torch")  # Trainer's webhook answer


def _job(queue: str = ""):
    return build_job(JobSpec(command="pretrain", name=NAME, namespace="ml", image="registry.example/trainer:1",
                             job_backend="trainjob", num_nodes=2, gpus_per_node=8, queue=queue))


def _launcher(api: FakeKubeApi, out: io.StringIO, pending_timeout_s: float = 600.0) -> JobLauncher:
    return JobLauncher(TrainJobApi(k8s.ApiClient(api.configuration())), poll_interval_s=0.05, out=out,
                       pending_timeout_s=pending_timeout_s)


def _pending(scheduled: dict | None = None, waiting: dict | None = None) -> dict:
    status: dict = {"phase": "Pending", "conditions": []}
    if scheduled:
        status["conditions"].append({"type": "PodScheduled", "status": "False", **scheduled})
    if waiting:
        status["containerStatuses"] = [{"name": "node", "ready": False, "restartCount": 0, "image": "i",
                                        "imageID": "", "state": {"waiting": waiting}}]
    return status


def _run(api: FakeKubeApi, out: io.StringIO, pending_timeout_s: float = 600.0) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises((JobFailed, UserError)) as failure:
        _launcher(api, out, pending_timeout_s).run(_job(), timeout_s=30, max_restarts=3)
    seconds = time.monotonic() - started
    print(f"failed after {seconds:.2f}s: {failure.value}")
    return failure.value, seconds


SCHEDULER_MESSAGES = [
    ("Unschedulable", "0/12 nodes are available: 12 Insufficient nvidia.com/gpu. preemption: 0/12 nodes are "
                      "available: 12 No preemption victims found for incoming pod."),
    ("Unschedulable", "0/12 nodes are available: 4 node(s) didn't match Pod's node affinity/selector, 8 node(s) had "
                      "untolerated taint {nvidia.com/gpu: present}."),
    ("Unschedulable", "0/3 nodes are available: 3 Insufficient memory."),
    ("Unschedulable", "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."),
]


@pytest.mark.parametrize("reason, message", SCHEDULER_MESSAGES)
def test_unschedulable_pods_are_explained_once_and_end_the_step_after_pending_timeout(reason, message):
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.statuses = [{"conditions": [condition("Created", "JobsCreationSucceeded")]}]
        api.pod_status = _pending(scheduled={"reason": reason, "message": message})
        out = io.StringIO()
        error, seconds = _run(api, out, pending_timeout_s=0.5)
    assert isinstance(error, JobFailed) and error.exit_code == EXIT_USER_ERROR
    assert "stayed unschedulable for" in str(error) and "(pending_timeout 0.5s)" in str(error)
    assert message in str(error)
    assert "free or add capacity" in str(error)
    log = out.getvalue()
    assert log.count(f"not scheduled: {reason}: {message}") == 1  # once, not every poll
    assert api.deleted == [NAME]
    assert 0.5 <= seconds < 5


def test_a_reason_still_true_is_said_again_after_repeat_s(monkeypatch):
    monkeypatch.setattr("launch.pending.REPEAT_S", 0.2)
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.statuses = [{"conditions": []}]
        api.pod_status = _pending(scheduled={"reason": "Unschedulable", "message": SCHEDULER_MESSAGES[0][1]})
        out = io.StringIO()
        _run(api, out, pending_timeout_s=0.7)
    assert out.getvalue().count("not scheduled: Unschedulable") >= 2


@pytest.mark.parametrize("waiting, expected", [
    ({"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.example/trainer:1"'},
     "the image cannot be pulled"),
    ({"reason": "ErrImagePull", "message": 'failed to pull and unpack image "registry.example/trainer:1": 401 '
                                           "Unauthorized"}, "the image cannot be pulled"),
    ({"reason": "CreateContainerConfigError", "message": 'secret "unmix-swav-s3" not found'},
     "a Secret, ConfigMap or key the pod refers to is missing"),
])
def test_an_image_that_cannot_be_pulled_or_a_missing_secret_ends_the_step_at_once(waiting, expected):
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.statuses = [{"conditions": [condition("Created", "JobsCreationSucceeded")]}]
        api.pod_status = _pending(waiting=waiting)
        out = io.StringIO()
        error, seconds = _run(api, out)
    message = str(error)
    assert isinstance(error, JobFailed) and error.exit_code == EXIT_USER_ERROR
    assert message.startswith(f"TrainJob ml/{NAME} cannot start: {expected}")
    assert waiting["message"] in message and "\n" not in message
    assert api.deleted == [NAME]
    assert seconds < 5


def test_the_v1_path_says_the_same_for_a_pytorchjob():
    from kubeflow.training import TrainingClient

    from launch.kube import PyTorchJobApi

    with FakeKubeApi(backend="pytorchjob") as api:  # stub API server
        api.statuses = [{"conditions": [condition("Created")]}]
        api.pod_status = _pending(waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"})
        client = TrainingClient(client_configuration=api.configuration(), namespace="ml")
        job = build_job(JobSpec(command="pretrain", name=NAME, namespace="ml", image="i", num_nodes=1,
                                gpus_per_node=8, job_backend="pytorchjob"))
        with pytest.raises(JobFailed, match=f"PyTorchJob ml/{NAME} cannot start: the image cannot be pulled"):
            JobLauncher(PyTorchJobApi(client), poll_interval_s=0.05, out=io.StringIO()).run(job, timeout_s=30,
                                                                                              max_restarts=3)
    assert api.deleted == [NAME]


def test_an_unknown_local_queue_ends_the_step_at_once_and_the_queue_wait_is_not_pending_time():
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.statuses = [{"conditions": [condition("Suspended", "Suspended")]}]
        api.pod_status = None
        workload = {"metadata": {"name": f"trainjob-{NAME}-3f2a1", "ownerReferences": [
            {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": NAME, "uid": "u"}]},
            "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Inadmissible",
                                       "message": "LocalQueue team-b doesn't exist"}]}}
        api.objects["/apis/kueue.x-k8s.io/v1beta1/namespaces/ml/workloads"] = {"items": [workload]}
        out = io.StringIO()
        started = time.monotonic()
        with pytest.raises(JobFailed) as failure:
            _launcher(api, out).run(_job(queue="team-b"), timeout_s=30, max_restarts=3)
        seconds = time.monotonic() - started
    print(f"unknown queue: failed after {seconds:.2f}s")
    assert "unknown LocalQueue: Kueue says \"LocalQueue team-b doesn't exist\"" in str(failure.value)
    assert "create the LocalQueue" in str(failure.value) and api.deleted == [NAME]
    assert seconds < 5


def test_a_queued_job_waits_beyond_pending_timeout_and_then_runs():
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        waiting = {"conditions": [condition("Suspended", "Suspended")]}
        api.statuses = [waiting] * 20 + [{"conditions": [condition("Created")]},
                                         {"conditions": [condition("Complete", "JobsCompleted")]}]
        workload = {"metadata": {"name": "wl", "ownerReferences": [{"kind": "TrainJob", "name": NAME}]},
                    "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                               "message": "couldn't assign flavors to pod set node: insufficient "
                                                          "quota for nvidia.com/gpu in flavor h100"}]}}
        api.objects["/apis/kueue.x-k8s.io/v1beta1/namespaces/ml/workloads"] = {"items": [workload]}
        out = io.StringIO()
        _launcher(api, out, pending_timeout_s=0.2).run(_job(queue="team-a"), timeout_s=30, max_restarts=3)
    log = out.getvalue()
    assert log.count("insufficient quota for nvidia.com/gpu in flavor h100") == 1
    assert "admitted after" in log and api.deleted == []


def test_warning_events_of_the_jobs_objects_are_said():
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.statuses = [{"conditions": []}] * 3 + [{"conditions": [condition("Complete", "JobsCompleted")]}]
        api.pod_status = _pending()
        api.events = [
            {"metadata": {"name": "e1"}, "type": "Warning", "reason": "FailedCreate",
             "message": 'pods "x" is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=8',
             "involvedObject": {"kind": "Job", "name": f"{NAME}-node-0", "namespace": "ml"}},
            {"metadata": {"name": "e2"}, "type": "Warning", "reason": "FailedCreate", "message": "someone else's",
             "involvedObject": {"kind": "Job", "name": "other-job", "namespace": "ml"}}]
        out = io.StringIO()
        _launcher(api, out).run(_job(), timeout_s=30, max_restarts=3)
    log = out.getvalue()
    assert log.count(f"Job {NAME}-node-0: FailedCreate: pods \"x\" is forbidden: exceeded quota") == 1
    assert "someone else's" not in log


@pytest.mark.parametrize("code, answer, expected", [
    (404, "404 page not found", "the API server does not serve trainjobs.trainer.kubeflow.org/v1alpha1 (creating "
                                f"TrainJob ml/{NAME}: 404): install its operator"),
    (404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": 'namespaces "ml" not found',
           "details": {"name": "ml", "kind": "namespaces"}}, "namespace 'ml' does not exist"),
    (403, {"kind": "Status", "code": 403, "reason": "Forbidden",
           "message": 'trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:ml:default-editor" '
                      'cannot create resource "trainjobs" in API group "trainer.kubeflow.org" in the namespace "ml"'},
     f"creating TrainJob ml/{NAME} is forbidden: trainjobs.trainer.kubeflow.org is forbidden: User"),
    # kept whole: the runtime's name and what to do about it
    (*UNKNOWN_RUNTIME, f"denied by an admission webhook: {UNKNOWN_RUNTIME[1]['message']}; fix what it names"),
])
def test_refusals_on_create_are_one_line_user_errors(code, answer, expected):
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.create_error = (code, answer)
        out = io.StringIO()
        started = time.monotonic()
        with pytest.raises(UserError) as failure:
            _launcher(api, out).run(_job(), timeout_s=30, max_restarts=3)
        seconds = time.monotonic() - started
    print(f"{code} on create: failed after {seconds:.2f}s")
    message = str(failure.value)
    assert expected in message and "\n" not in message and failure.value.exit_code == EXIT_USER_ERROR
    assert "this is a bug" not in message and seconds < 5
    if code == 403 and "webhook" not in message:
        assert "apply k8s/trainer-v2/access" in message


def test_forbidden_reads_while_waiting_end_the_step_instead_of_retrying_until_the_deadline():
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.forbidden_paths.add("/api/v1/namespaces/ml/pods")  # RBAC taken away after the job was created
        started = time.monotonic()
        with pytest.raises(UserError, match=f"reading TrainJob ml/{NAME} is forbidden") as failure:
            _launcher(api, io.StringIO()).run(_job(), timeout_s=60, max_restarts=3)
    assert failure.value.exit_code == EXIT_USER_ERROR and time.monotonic() - started < 5
    assert api.created


def test_an_admitted_job_whose_controller_makes_no_pod_ends_after_pending_timeout():
    """e.g. a TrainJob on a runtime that does not exist, on a cluster without Trainer's admission webhook."""
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.statuses = [{"conditions": []}]
        api.pods_exist = False
        out = io.StringIO()
        error, seconds = _run(api, out, pending_timeout_s=0.5)
    assert isinstance(error, JobFailed) and "was admitted but no pod of it appeared" in str(error)
    assert "python -m pipeline preflight" in str(error) and api.deleted == [NAME] and 0.5 <= seconds < 5


def test_a_job_deleted_under_the_launcher_ends_the_step_in_one_line():
    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        api.statuses = [{"conditions": []}]
        launcher = _launcher(api, io.StringIO())
        threading.Timer(0.3, lambda: api.jobs.clear()).start()  # someone runs kubectl delete trainjob
        with pytest.raises(JobFailed, match=f"TrainJob ml/{NAME} was deleted while this step followed it"):
            launcher.run(_job(), timeout_s=30, max_restarts=3)


STEP_SCRIPT = """
import sys
from launch.run import run_job
from launch.spec import JobSpec
from trainer.run.boundary import run_guarded

spec = JobSpec(command="pretrain", name="unmix-pretrain-v2", namespace="ml", image="registry.example/trainer:1",
               job_backend="trainjob", num_nodes=1, gpus_per_node=0,
               trainer_args=("--data_path", "d", "--dump_path", "o", "--preset", "demo_cpu"))
sys.exit(run_guarded(lambda: run_job(spec, "kubernetes", timeout_s=3600)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("piece", ["crd", "rbac", "image"])
def test_a_launching_step_with_the_launchers_own_kubeconfig_ends_in_one_line(piece, tmp_path):
    """A real process with KUBECONFIG at the stub API server, as a launching step runs on a laptop with
    `launcher=kubernetes` (the trainer's flag checks first): the poll right after the create sees the image
    failure; later ones come every poll interval (15 s)."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.launch.test_kube import REPO

    with FakeKubeApi(backend="trainjob") as api:  # stub API server
        if piece == "crd":
            api.create_error = (404, "404 page not found")
        elif piece == "rbac":
            api.create_error = (403, {"kind": "Status", "code": 403, "reason": "Forbidden", "message":
                                      'trainjobs.trainer.kubeflow.org is forbidden: User "me" cannot create resource'})
        else:
            api.statuses = [{"conditions": [condition("Created", "JobsCreationSucceeded")]}]
            api.pod_status = _pending(waiting={"reason": "ErrImagePull", "message": "manifest unknown"})
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": api.host}}],
            "users": [{"name": "me", "user": {"token": "t"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me"}}]}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_") and k != "HOSTNAME"}
        env.update(KUBECONFIG=str(kubeconfig), PYTHONPATH=str(REPO))
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", STEP_SCRIPT], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=120)
        seconds = time.monotonic() - started
    print(f"{piece}: the step exited {result.returncode} after {seconds:.1f}s (process start included)")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "this is a bug" not in result.stderr
    expected = {"crd": "does not serve trainjobs.trainer.kubeflow.org/v1alpha1", "rbac": "is forbidden",
                "image": "the image cannot be pulled"}[piece]
    assert expected in errors[0]
