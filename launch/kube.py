"""Run a PyTorchJob to the end from inside a pipeline step.

Creates the job (or adopts it when a retried step finds its own job still there), streams the master
pod's log into this step's log, polls the job's conditions until Succeeded, Failed or a real deadline,
counts the group's restarts (the operator recreates a pod that failed with a retryable exit code; it does
not bound that under restartPolicy ExitCode, kubeflow/trainer#2045) and ends the job once they pass
`max_restarts`, deletes the job when the step is cancelled (SIGTERM from the pipeline backend) or times
out, and fails with the job's own reason and the trainer's exit code.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from kubeflow.training import TrainingClient, models
from kubeflow.training.constants import constants
from kubernetes.client import V1OwnerReference

from launch.errors import JobFailed
from launch.pytorchjob import CONTAINER_NAME
from trainer.errors import EXIT_USER_ERROR

JOB_CONDITION_RESTARTING = "Restarting"
JOB_CONDITION_SUSPENDED = "Suspended"


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


class MasterLogStreamer:
    """Follows the master pod's `pytorch` container log in a thread; re-attaches to a recreated pod (same
    name, new uid: restartPolicy ExitCode recreates pods instead of restarting containers)."""

    def __init__(self, client: TrainingClient, name: str, namespace: str, out: TextIO) -> None:
        self._client, self._name, self._namespace, self._out = client, name, namespace, out
        self._followed: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None

    def poll(self, pods: list[Any]) -> None:
        """Start following the master container once it runs (again), unless a follow is still live."""
        if self._thread is not None and self._thread.is_alive():
            return
        for pod in pods:
            labels = pod.metadata.labels or {}
            if labels.get(constants.JOB_ROLE_LABEL) != "master":
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
            response = self._client.core_api.read_namespaced_pod_log(
                pod_name, self._namespace, container=CONTAINER_NAME, follow=True, _preload_content=False)
            for line in response.stream():
                self._out.write(f"[{pod_name}] {line.decode('utf-8', 'replace')}")
                self._out.flush()
        except Exception as error:  # a broken log stream must never fail the training step
            self._out.write(f"[launcher] log stream of {pod_name} ended: {type(error).__name__}: {error}\n")


class RestartCounter:
    """Restarts of the group, from what each poll sees: a pod name with a new uid (recreated by the operator)
    and each new `Restarting` condition. One group restart recreates every pod, so the count is the most
    any one pod was recreated (or the Restarting episodes, whichever is larger)."""

    def __init__(self) -> None:
        self._uids: dict[str, list[str]] = {}
        self._episodes: set[str] = set()
        self.count = 0

    def update(self, pods: list[Any], conditions: list[Any]) -> list[str]:
        """Take in one poll; returns the messages of restarts first seen now."""
        for pod in pods:
            seen = self._uids.setdefault(pod.metadata.name, [])
            if _uid(pod) not in seen:
                seen.append(_uid(pod))
        messages = []
        for condition in conditions:
            if condition.type == JOB_CONDITION_RESTARTING and condition.status == "True":
                key = str(condition.last_transition_time or condition.last_update_time)
                if key not in self._episodes:
                    self._episodes.add(key)
                    messages.append(condition.message or "the operator restarts failed replicas")
        by_pods = max((len(uids) - 1 for uids in self._uids.values()), default=0)
        count = max(by_pods, len(self._episodes))
        if count > self.count and not messages:
            messages = ["a pod of the job was recreated"]
        self.count = max(count, self.count)
        return messages if count else []


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of the ApiException the SDK wrapped into `error`, if any."""
    return getattr(error.__cause__, "status", None)


def _has(conditions: list[Any], kind: str) -> Any | None:
    return next((c for c in reversed(conditions) if c.type == kind and c.status == "True"), None)


def _terminated(pod: Any) -> Any | None:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        state = status.state.terminated if status.state else None
        state = state or (status.last_state.terminated if status.last_state else None)
        if status.name == CONTAINER_NAME and state is not None:
            return state
    return None


def failure(client: TrainingClient, job: models.KubeflowOrgV1PyTorchJob) -> tuple[str, int]:
    """The operator's Failed condition plus how the failed containers ended; and the exit code to end with
    (the trainer's, when a container reports one)."""
    conditions = job.status.conditions if job.status and job.status.conditions else []
    failed = _has(conditions, constants.JOB_CONDITION_FAILED)
    reason = f"{failed.reason}: {failed.message}" if failed else "Failed"
    try:
        pods = client.get_job_pods(job.metadata.name, namespace=job.metadata.namespace)
    except RuntimeError:
        return reason, EXIT_USER_ERROR
    code = None
    for pod in pods:
        state = _terminated(pod)
        if state is not None and state.exit_code:
            code = code or state.exit_code
            reason += (f" ({pod.metadata.name}: {state.reason or 'terminated'}, exit code {state.exit_code}"
                       f"{', ' + state.message.strip() if state.message else ''})")
    return reason, code or EXIT_USER_ERROR


class PyTorchJobLauncher:
    def __init__(self, client: TrainingClient, poll_interval_s: float = 15.0, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.poll_interval_s, self.clock = client, poll_interval_s, clock
        self.out = out or sys.stdout

    def say(self, message: str) -> None:
        self.out.write(f"[launcher] {message}\n")
        self.out.flush()

    def own_by_run(self, job: models.KubeflowOrgV1PyTorchJob, pod_name: str) -> None:
        """Make the pipeline run's own object (the Argo Workflow that owns the step's pod) the job's owner: when
        the run is deleted, Kubernetes' garbage collector deletes the job too; when only the step's pod is lost
        (a node drained), the job stays for the retried step to adopt."""
        try:
            pod = self.client.core_api.read_namespaced_pod(pod_name, job.metadata.namespace)
        except Exception as error:  # no permission or not in a pod: SIGTERM handling still deletes
            self.say(f"not owning the PyTorchJob by the run ({type(error).__name__}); cancellation relies on SIGTERM")
            return
        owners = pod.metadata.owner_references or []
        if not owners:
            self.say(f"pod {pod_name} has no owner; cancellation relies on SIGTERM")
            return
        job.metadata.owner_references = [V1OwnerReference(api_version=owner.api_version, kind=owner.kind,
                                                          name=owner.name, uid=owner.uid) for owner in owners]

    def submit(self, job: models.KubeflowOrgV1PyTorchJob) -> None:
        """Create the job, or adopt it: a retried step (or a restarted launcher pod) finds its job."""
        name, namespace = job.metadata.name, job.metadata.namespace
        try:
            self.client.get_job(name, namespace=namespace)
            self.say(f"PyTorchJob {namespace}/{name} exists already: following it instead of creating it")
            return
        except RuntimeError as error:
            if _http_status(error) != 404:
                raise
        self.client.create_job(job=job, namespace=namespace)
        self.say(f"created PyTorchJob {namespace}/{name}")

    def delete(self, name: str, namespace: str) -> None:
        try:
            self.client.delete_job(name, namespace=namespace)
            self.say(f"deleted PyTorchJob {namespace}/{name}")
        except (RuntimeError, TimeoutError) as error:
            self.say(f"could not delete PyTorchJob {namespace}/{name}: {error}")

    def run(self, job: models.KubeflowOrgV1PyTorchJob, timeout_s: float,
            max_restarts: int | None = None) -> models.KubeflowOrgV1PyTorchJob:
        """Submit `job` and wait for it; returns the Succeeded job, raises JobFailed (or StepCancelled)."""
        name, namespace = job.metadata.name, job.metadata.namespace
        budget = job.spec.run_policy.backoff_limit if max_restarts is None else max_restarts
        deadline = self.clock() + timeout_s
        with sigterm_raises():
            self.submit(job)
            try:
                return self._wait(name, namespace, deadline, timeout_s, budget)
            except (StepCancelled, KeyboardInterrupt):
                self.say("step cancelled: deleting the PyTorchJob so that its pods stop")
                self.delete(name, namespace)
                raise

    def _read(self, name: str, namespace: str, deadline: float) -> tuple[Any, list[Any]] | None:
        """The job and its pods; None after a transient API error (the API server restarting must not fail
        a multi-day job; a deleted job must)."""
        try:
            current = self.client.get_job(name, namespace=namespace)
            pods = self.client.get_job_pods(name, namespace=namespace)
        except (RuntimeError, TimeoutError) as error:
            if _http_status(error) == 404 or self.clock() >= deadline:
                raise
            self.say(f"reading the PyTorchJob failed ({error}); retrying")
            return None
        return current, pods

    def _wait(self, name: str, namespace: str, deadline: float, timeout_s: float,
              budget: int) -> models.KubeflowOrgV1PyTorchJob:
        streamer = MasterLogStreamer(self.client, name, namespace, self.out)
        restarts = RestartCounter()
        last_condition = None
        while True:
            read = self._read(name, namespace, deadline)
            if read is None:
                time.sleep(self.poll_interval_s)
                continue
            current, pods = read
            conditions = self.client.get_job_conditions(job=current)
            if conditions and conditions[-1].type != last_condition:
                last_condition = conditions[-1].type
                note = " (waiting for its queue to admit it)" if last_condition == JOB_CONDITION_SUSPENDED else ""
                self.say(f"PyTorchJob {namespace}/{name}: {last_condition}{note}")
            for message in restarts.update(pods, conditions):
                self.say(f"restart {restarts.count}/{budget}: {message}")
            streamer.poll(pods)
            if _has(conditions, constants.JOB_CONDITION_SUCCEEDED):
                streamer.join(timeout_s=30)
                if restarts.count:
                    self.say(f"PyTorchJob {namespace}/{name} succeeded after {restarts.count} restart(s)")
                return current
            if _has(conditions, constants.JOB_CONDITION_FAILED):
                streamer.join(timeout_s=30)
                reason, code = failure(self.client, current)
                raise JobFailed(f"PyTorchJob {namespace}/{name} failed after {restarts.count} restart(s): {reason}",
                                exit_code=code)
            if restarts.count > budget:
                self.delete(name, namespace)
                raise JobFailed(f"PyTorchJob {namespace}/{name} restarted {restarts.count} times, over its budget "
                                f"of max_restarts={budget}; it was deleted (its master's log above says why)")
            if self.clock() >= deadline:
                self.delete(name, namespace)
                raise JobFailed(f"PyTorchJob {namespace}/{name} did not finish within {timeout_s:.0f}s; it was "
                                "deleted (raise the step's timeout to wait longer)")
            time.sleep(min(self.poll_interval_s, max(deadline - self.clock(), 0.0)))
