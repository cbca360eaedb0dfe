"""Run a job (a PyTorchJob or a TrainJob) to the end from inside a pipeline step.

Creates the job (or adopts it when a retried step finds its own job still there), streams the master
pod's log into this step's log, polls the job's conditions until it succeeded, failed or passed a real
deadline, counts the group's restarts and ends the job once they pass `max_restarts`, deletes the job when
the step is cancelled (SIGTERM from the pipeline backend) or times out, and fails with the job's own reason
and the trainer's exit code.

One launcher, two APIs (`JobApi`): `PyTorchJobApi` (Training Operator v1, through kubeflow-training's
TrainingClient; the operator recreates a pod that failed with a retryable exit code and does not bound that
under restartPolicy ExitCode, kubeflow/trainer#2045) and `TrainJobApi` (Kubeflow Trainer v2, the
trainer.kubeflow.org custom objects; JobSet recreates every Job of the group on a restart and labels the new
pods with `jobset.sigs.k8s.io/restart-attempt`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol, TextIO

from kubeflow.training import TrainingClient
from kubeflow.training.constants import constants
from kubeflow_trainer_api import models as trainer_models
from kubernetes import client as k8s

from launch import pytorchjob, trainjob
from launch.apierrors import refusal, status_of
from launch.errors import JobFailed
from launch.pending import DEFAULT_PENDING_TIMEOUT_S, PendingWatch
from trainer.errors import EXIT_USER_ERROR, RetryableError, UserError

JOB_CONDITION_RESTARTING = "Restarting"
JOB_CONDITION_SUSPENDED = "Suspended"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOBSET_REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
JOBSET_RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"
JOB_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds of each TrainJob API call; the log stream has none


class StepCancelled(BaseException):
    """SIGTERM arrived: the pipeline run was cancelled or the step's pod is being deleted."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into StepCancelled in the main thread, so that cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise StepCancelled(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _uid(pod: Any) -> str:
    return pod.metadata.uid or pod.metadata.name


def _labels(pod: Any) -> dict[str, str]:
    return pod.metadata.labels or {}


class JobApi(Protocol):
    """What the launcher needs of one job kind. Every call raises RuntimeError (or TimeoutError) whose
    __cause__ carries the HTTP status, as kubeflow-training's client does."""

    kind: str  # e.g. PyTorchJob
    resource: str  # plural.group/version, for messages
    rbac_fix: str  # what grants the launcher its rights on this kind
    container: str  # the training container of every node's pod
    succeeded: str  # the condition type of success
    core_api: k8s.CoreV1Api
    custom_api: k8s.CustomObjectsApi

    def get(self, name: str, namespace: str) -> Any: ...
    def create(self, job: Any) -> None: ...
    def delete(self, name: str, namespace: str) -> None: ...
    def pods(self, name: str, namespace: str) -> list[Any]: ...
    def conditions(self, job: Any) -> list[Any]: ...
    def is_master(self, pod: Any) -> bool: ...
    def restart_attempt(self, pods: list[Any]) -> int: ...
    def set_owners(self, job: Any, owners: list[Any]) -> None: ...


class PyTorchJobApi:
    """A PyTorchJob of the Training Operator v1, through kubeflow-training's TrainingClient."""

    kind, container, succeeded = "PyTorchJob", pytorchjob.CONTAINER_NAME, constants.JOB_CONDITION_SUCCEEDED
    resource = "pytorchjobs.kubeflow.org/v1"
    rbac_fix = ("apply k8s/training-operator-v1/access (the unmix-swav-launcher Role) and k8s/kubeflow-profile (binds "
                "it to Kubeflow Pipelines' step accounts) in the namespace, or run the steps as unmix-swav-launcher")

    def __init__(self, client: TrainingClient) -> None:
        self.client, self.core_api, self.custom_api = client, client.core_api, client.custom_api

    def get(self, name: str, namespace: str) -> Any:
        return self.client.get_job(name, namespace=namespace)

    def create(self, job: Any) -> None:
        self.client.create_job(job=job, namespace=job.metadata.namespace)

    def delete(self, name: str, namespace: str) -> None:
        self.client.delete_job(name, namespace=namespace)

    def pods(self, name: str, namespace: str) -> list[Any]:
        return self.client.get_job_pods(name, namespace=namespace)

    def conditions(self, job: Any) -> list[Any]:
        return self.client.get_job_conditions(job=job)

    def is_master(self, pod: Any) -> bool:
        return _labels(pod).get(constants.JOB_ROLE_LABEL) == "master"

    def restart_attempt(self, pods: list[Any]) -> int:
        return 0  # the operator recreates pods under the same names: RestartCounter sees their new uids

    def set_owners(self, job: Any, owners: list[Any]) -> None:
        job.metadata.owner_references = [k8s.V1OwnerReference(api_version=o.api_version, kind=o.kind, name=o.name,
                                                               uid=o.uid) for o in owners]


class TrainJobApi:
    """A TrainJob of Kubeflow Trainer v2: trainer.kubeflow.org custom objects and the JobSet's pods."""

    kind, container, succeeded = trainjob.KIND, trainjob.CONTAINER_NAME, "Complete"
    group, version, plural = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
    resource = f"{plural}.{group}/{version}"
    rbac_fix = PyTorchJobApi.rbac_fix.replace("k8s/training-operator-v1/access", "k8s/trainer-v2/access")

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.custom_api, self.core_api = k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client)

    @staticmethod
    def _call(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as error:  # the launcher reads the HTTP status from __cause__
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise RuntimeError(f"{what} failed: {type(error).__name__}: {first_line}") from error

    def get(self, name: str, namespace: str) -> trainer_models.TrainerV1alpha1TrainJob:
        found = self._call(f"reading TrainJob {namespace}/{name}", lambda: (
            self.custom_api.get_namespaced_custom_object(self.group, self.version, namespace, self.plural, name,
                                                         _request_timeout=REQUEST_TIMEOUT)))
        return trainer_models.TrainerV1alpha1TrainJob.from_dict(found)

    def create(self, job: trainer_models.TrainerV1alpha1TrainJob) -> None:
        namespace = job.metadata.namespace
        self._call(f"creating TrainJob {namespace}/{job.metadata.name}", lambda: (
            self.custom_api.create_namespaced_custom_object(self.group, self.version, namespace, self.plural,
                                                            trainjob.to_manifest(job),
                                                            _request_timeout=REQUEST_TIMEOUT)))

    def delete(self, name: str, namespace: str) -> None:
        # Foreground: the JobSet, its Jobs and their pods go with it.
        self._call(f"deleting TrainJob {namespace}/{name}", lambda: (
            self.custom_api.delete_namespaced_custom_object(self.group, self.version, namespace, self.plural, name,
                                                            propagation_policy="Foreground",
                                                            _request_timeout=REQUEST_TIMEOUT)))

    def pods(self, name: str, namespace: str) -> list[Any]:
        found = self._call(f"listing the pods of TrainJob {namespace}/{name}", lambda: (
            self.core_api.list_namespaced_pod(namespace, label_selector=f"{JOBSET_NAME_LABEL}={name}",
                                              _request_timeout=REQUEST_TIMEOUT)))
        return list(found.items)

    def conditions(self, job: trainer_models.TrainerV1alpha1TrainJob) -> list[Any]:
        return list(job.status.conditions or []) if job.status else []

    def is_master(self, pod: Any) -> bool:
        labels = _labels(pod)
        return labels.get(JOBSET_REPLICATED_JOB_LABEL) == trainjob.CONTAINER_NAME and labels.get(JOB_INDEX_LABEL) == "0"

    def restart_attempt(self, pods: list[Any]) -> int:
        return max((int(_labels(pod).get(JOBSET_RESTART_LABEL, "0") or 0) for pod in pods), default=0)

    def set_owners(self, job: Any, owners: list[Any]) -> None:
        job.metadata.owner_references = [trainer_models.IoK8sApimachineryPkgApisMetaV1OwnerReference(
            api_version=o.api_version, kind=o.kind, name=o.name, uid=o.uid) for o in owners]


def load_api_client() -> k8s.ApiClient:
    """The launcher's client configuration: in a pod its service account, else KUBECONFIG / ~/.kube/config."""
    from kubernetes import config

    configuration = k8s.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except (config.ConfigException, OSError) as error:
            first = (str(error).splitlines() or [type(error).__name__])[0]
            raise UserError(f"no Kubernetes credentials: not in a pod, and no usable kubeconfig ({first}); set "
                            "KUBECONFIG or write ~/.kube/config (`kubectl get pods` works when it is right)") from error
    return k8s.ApiClient(configuration)


def job_api(backend: str, api_client: k8s.ApiClient | None = None, namespace: str = "default") -> JobApi:
    """The API of `backend` (launch.spec.BACKENDS) with the in-cluster or kubeconfig credentials by default."""
    api_client = api_client or load_api_client()
    if backend == "trainjob":
        return TrainJobApi(api_client)
    return PyTorchJobApi(TrainingClient(client_configuration=api_client.configuration, namespace=namespace))


class MasterLogStreamer:
    """Follows the master pod's training container log in a thread; re-attaches to a pod that replaced it
    (a new uid: the operator recreates pods instead of restarting containers, JobSet recreates whole Jobs)."""

    def __init__(self, api: JobApi, name: str, namespace: str, out: TextIO) -> None:
        self._api, self._name, self._namespace, self._out = api, name, namespace, out
        self._followed: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None

    def poll(self, pods: list[Any]) -> None:
        """Start following the master container once it runs (again), unless a follow is still live."""
        if self._thread is not None and self._thread.is_alive():
            return
        for pod in pods:
            if not self._api.is_master(pod):
                continue
            if pod.status is None or pod.status.phase == constants.POD_PHASE_PENDING:
                continue
            key = (pod.metadata.name, _uid(pod))
            if key in self._followed:
                continue
            self._followed.add(key)
            self._thread = threading.Thread(target=self._follow, args=(pod.metadata.name,), daemon=True)
            self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _follow(self, pod_name: str) -> None:
        try:
            response = self._api.core_api.read_namespaced_pod_log(
                pod_name, self._namespace, container=self._api.container, follow=True, _preload_content=False)
            for line in response.stream():
                self._out.write(f"[{pod_name}] {line.decode('utf-8', 'replace')}")
                self._out.flush()
        except Exception as error:  # a broken log stream must never fail the training step
            self._out.write(f"[launcher] log stream of {pod_name} ended: {type(error).__name__}: {error}\n")


class RestartCounter:
    """Restarts of the group, from what each poll sees: a pod name with a new uid (recreated by the operator),
    each new `Restarting` condition, and the restart attempt the API reports (JobSet's pod label). One group
    restart recreates every pod, so the count is the largest of these."""

    def __init__(self) -> None:
        self._uids: dict[str, list[str]] = {}
        self._episodes: set[str] = set()
        self.count = 0

    def update(self, pods: list[Any], conditions: list[Any], attempt: int = 0) -> list[str]:
        """Take in one poll; returns the messages of restarts first seen now."""
        for pod in pods:
            seen = self._uids.setdefault(pod.metadata.name, [])
            if _uid(pod) not in seen:
                seen.append(_uid(pod))
        messages = []
        for condition in conditions:
            if condition.type == JOB_CONDITION_RESTARTING and condition.status == "True":
                key = str(condition.last_transition_time or getattr(condition, "last_update_time", None))
                if key not in self._episodes:
                    self._episodes.add(key)
                    messages.append(condition.message or "the operator restarts failed replicas")
        by_pods = max((len(uids) - 1 for uids in self._uids.values()), default=0)
        count = max(by_pods, len(self._episodes), attempt)
        if count > self.count and not messages:
            messages = ["the pods of the job were recreated" if attempt else "a pod of the job was recreated"]
        self.count = max(count, self.count)
        return messages if count else []


def _has(conditions: list[Any], kind: str) -> Any | None:
    return next((c for c in reversed(conditions) if c.type == kind and c.status == "True"), None)


def _terminated(pod: Any, container: str) -> Any | None:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        state = status.state.terminated if status.state else None
        state = state or (status.last_state.terminated if status.last_state else None)
        if status.name == container and state is not None:
            return state
    return None


def failure(api: JobApi, job: Any) -> tuple[str, int]:
    """The controller's Failed condition plus how the failed containers ended; and the exit code to end with
    (the trainer's, when a container reports one)."""
    failed = _has(api.conditions(job), constants.JOB_CONDITION_FAILED)
    reason = f"{failed.reason}: {failed.message}" if failed else "Failed"
    try:
        pods = api.pods(job.metadata.name, job.metadata.namespace)
    except RuntimeError:
        return reason, EXIT_USER_ERROR
    code = None
    for pod in pods:
        state = _terminated(pod, api.container)
        if state is not None and state.exit_code:
            code = code or state.exit_code
            reason += (f" ({pod.metadata.name}: {state.reason or 'terminated'}, exit code {state.exit_code}"
                       f"{', ' + state.message.strip() if state.message else ''})")
    return reason, code or EXIT_USER_ERROR


class JobLauncher:
    def __init__(self, api: JobApi, poll_interval_s: float = 15.0, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 pending_timeout_s: float = DEFAULT_PENDING_TIMEOUT_S) -> None:
        self.api, self.poll_interval_s, self.clock = api, poll_interval_s, clock
        self.out = out or sys.stdout
        self.pending_timeout_s = pending_timeout_s

    def say(self, message: str) -> None:
        self.out.write(f"[launcher] {message}\n")
        self.out.flush()

    def own_by_run(self, job: Any, pod_name: str) -> None:
        """Make the pipeline run's own object (the Argo Workflow that owns the step's pod) the job's owner: when
        the run is deleted, Kubernetes' garbage collector deletes the job too; when only the step's pod is lost
        (a node drained), the job stays for the retried step to adopt."""
        try:
            pod = self.api.core_api.read_namespaced_pod(pod_name, job.metadata.namespace)
        except Exception as error:  # no permission or not in a pod: SIGTERM handling still deletes
            self.say(f"not owning the {self.api.kind} by the run ({type(error).__name__}); cancellation relies on "
                     "SIGTERM")
            return
        owners = pod.metadata.owner_references or []
        if not owners:
            self.say(f"pod {pod_name} has no owner; cancellation relies on SIGTERM")
            return
        self.api.set_owners(job, owners)

    def submit(self, job: Any) -> None:
        """Create the job, or adopt it: a retried step (or a restarted launcher pod) finds its job."""
        name, namespace = job.metadata.name, job.metadata.namespace
        try:
            self.api.get(name, namespace)
            self.say(f"{self.api.kind} {namespace}/{name} exists already: following it instead of creating it")
            return
        except (RuntimeError, TimeoutError) as error:
            if status_of(error) != 404:
                self._refuse(error, f"reading {self.api.kind} {namespace}/{name}", namespace)
        try:
            self.api.create(job)
        except (RuntimeError, TimeoutError) as error:
            if status_of(error) == 409:  # created meanwhile (a second launcher pod): follow it
                self.say(f"{self.api.kind} {namespace}/{name} was created meanwhile: following it")
                return
            self._refuse(error, f"creating {self.api.kind} {namespace}/{name}", namespace)
        self.say(f"created {self.api.kind} {namespace}/{name}")

    def _refuse(self, error: BaseException, doing: str, namespace: str) -> NoReturn:
        """Raise the user error a refusal means (exit 2, no retry can cure it), else a retryable one (138)."""
        refused = refusal(error, doing, self.api.resource, namespace, self.api.rbac_fix)
        if refused is not None:
            raise refused from error
        # No answer, a 5xx, 429 (throttled): the API server's state, not the user's setup.
        raise RetryableError(f"{doing} failed: {(str(error).splitlines() or ['?'])[0]}; the Kubernetes API did not "
                             "serve it (a retry of the step may cure it)") from error

    def delete(self, name: str, namespace: str) -> None:
        try:
            self.api.delete(name, namespace)
            self.say(f"deleted {self.api.kind} {namespace}/{name}")
        except (RuntimeError, TimeoutError) as error:
            self.say(f"could not delete {self.api.kind} {namespace}/{name}: {error}")

    def run(self, job: Any, timeout_s: float, max_restarts: int) -> Any:
        """Submit `job` and wait for it; returns the finished job, raises JobFailed (or StepCancelled)."""
        name, namespace = job.metadata.name, job.metadata.namespace
        deadline = self.clock() + timeout_s
        with sigterm_raises():
            self.submit(job)
            try:
                return self._wait(name, namespace, deadline, timeout_s, max_restarts)
            except (StepCancelled, KeyboardInterrupt):
                self.say(f"step cancelled: deleting the {self.api.kind} so that its pods stop")
                self.delete(name, namespace)
                raise

    def _read(self, name: str, namespace: str, deadline: float) -> tuple[Any, list[Any]] | None:
        """The job and its pods; None after a transient API error (the API server restarting must not fail
        a multi-day job; a deleted job must)."""
        try:
            current = self.api.get(name, namespace)
            pods = self.api.pods(name, namespace)
        except (RuntimeError, TimeoutError) as error:
            if status_of(error) in (401, 403):  # RBAC changed under a running job: waiting will not cure it
                self._refuse(error, f"reading {self.api.kind} {namespace}/{name}", namespace)
            if status_of(error) == 404:
                raise JobFailed(f"{self.api.kind} {namespace}/{name} was deleted while this step followed it (by "
                                "someone, or with the pipeline run); run the step again to start it anew") from error
            if self.clock() >= deadline:
                raise
            self.say(f"reading the {self.api.kind} failed ({error}); retrying")
            return None
        return current, pods

    def _wait(self, name: str, namespace: str, deadline: float, timeout_s: float, budget: int) -> Any:
        kind = self.api.kind
        streamer = MasterLogStreamer(self.api, name, namespace, self.out)
        restarts = RestartCounter()
        pending = PendingWatch(self.api.core_api, self.api.custom_api, kind, name, namespace, self.say, self.clock,
                               self.pending_timeout_s)
        last_condition = None
        while True:
            read = self._read(name, namespace, deadline)
            if read is None:
                time.sleep(self.poll_interval_s)
                continue
            current, pods = read
            conditions = self.api.conditions(current)
            if conditions and conditions[-1].type != last_condition:
                last_condition = conditions[-1].type
                note = " (waiting for its queue to admit it)" if last_condition == JOB_CONDITION_SUSPENDED else ""
                self.say(f"{kind} {namespace}/{name}: {last_condition}{note}")
            for message in restarts.update(pods, conditions, self.api.restart_attempt(pods)):
                self.say(f"restart {restarts.count}/{budget}: {message}")
            streamer.poll(pods)
            if _has(conditions, self.api.succeeded):
                streamer.join(timeout_s=30)
                if restarts.count:
                    self.say(f"{kind} {namespace}/{name} succeeded after {restarts.count} restart(s)")
                return current
            if _has(conditions, constants.JOB_CONDITION_FAILED):
                streamer.join(timeout_s=30)
                reason, code = failure(self.api, current)
                raise JobFailed(f"{kind} {namespace}/{name} failed after {restarts.count} restart(s): {reason}",
                                exit_code=code)
            if restarts.count > budget:
                self.delete(name, namespace)
                raise JobFailed(f"{kind} {namespace}/{name} restarted {restarts.count} times, over its budget "
                                f"of max_restarts={budget}; it was deleted (its master's log above says why)")
            try:
                pending.poll(current, pods, suspended=_has(conditions, JOB_CONDITION_SUSPENDED) is not None)
            except JobFailed:
                self.delete(name, namespace)  # a job that cannot start must not hold its queue's quota
                raise
            if self.clock() >= deadline:
                self.delete(name, namespace)
                raise JobFailed(f"{kind} {namespace}/{name} did not finish within {timeout_s:.0f}s; it was "
                                "deleted (raise the step's timeout to wait longer)")
            time.sleep(min(self.poll_interval_s, max(deadline - self.clock(), 0.0)))
