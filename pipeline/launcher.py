"""Run a PyTorchJob to the end from inside a pipeline step.

Creates the job (or adopts it when a retried step finds its own job still there), streams the master
pod's log into this step's log, polls the job's conditions until Succeeded, Failed or a real deadline,
deletes the job when the step is cancelled (SIGTERM from the pipeline backend) or times out, and
fails with the job's own failure reason.
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

from pipeline.pytorchjob import CONTAINER_NAME


class PyTorchJobFailed(RuntimeError):
    """The job reached the Failed condition (message: the operator's reason and the master's exit)."""


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


class MasterLogStreamer:
    """Follows the master pod's `pytorch` container log in a thread; re-attaches after a restart."""

    def __init__(self, client: TrainingClient, name: str, namespace: str, out: TextIO) -> None:
        self._client, self._name, self._namespace, self._out = client, name, namespace, out
        self._followed: set[tuple[str, int]] = set()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Start following the master container once it runs (again), unless a follow is still live."""
        if self._thread is not None and self._thread.is_alive():
            return
        pods = self._client.get_job_pods(self._name, namespace=self._namespace, is_master=True)
        for pod in pods:
            if pod.status is None or pod.status.phase == constants.POD_PHASE_PENDING:
                continue
            key = (pod.metadata.name, _restart_count(pod))
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


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of the ApiException the SDK wrapped into `error`, if any."""
    return getattr(error.__cause__, "status", None)


def _restart_count(pod: Any) -> int:
    statuses = (pod.status.container_statuses or []) if pod.status else []
    return sum(status.restart_count or 0 for status in statuses if status.name == CONTAINER_NAME)


def _has(conditions: list[Any], kind: str) -> Any | None:
    return next((c for c in reversed(conditions) if c.type == kind and c.status == "True"), None)


def failure_reason(client: TrainingClient, job: models.KubeflowOrgV1PyTorchJob) -> str:
    """The operator's Failed condition, plus how the master's container ended (OOMKilled, exit code)."""
    conditions = job.status.conditions if job.status and job.status.conditions else []
    failed = _has(conditions, constants.JOB_CONDITION_FAILED)
    reason = f"{failed.reason}: {failed.message}" if failed else "Failed"
    try:
        pods = client.get_job_pods(job.metadata.name, namespace=job.metadata.namespace, is_master=True)
    except RuntimeError:
        return reason
    for pod in pods:
        for status in (pod.status.container_statuses or []) if pod.status else []:
            state = status.state.terminated if status.state else None
            state = state or (status.last_state.terminated if status.last_state else None)
            if status.name == CONTAINER_NAME and state is not None:
                reason += (f" (master container: {state.reason or 'terminated'}, exit code {state.exit_code}"
                           f"{', ' + state.message.strip() if state.message else ''})")
    return reason


class PyTorchJobLauncher:
    def __init__(self, client: TrainingClient, poll_interval_s: float = 15.0, out: TextIO = sys.stdout,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.poll_interval_s, self.out, self.clock = client, poll_interval_s, out, clock

    def say(self, message: str) -> None:
        self.out.write(f"[launcher] {message}\n")
        self.out.flush()

    def own_by_pod(self, job: models.KubeflowOrgV1PyTorchJob, pod_name: str) -> None:
        """Make the step's pod the job's owner: if the pod goes (a run cancelled while this process
        could not catch SIGTERM, a node lost), Kubernetes' garbage collector deletes the job too."""
        try:
            pod = self.client.core_api.read_namespaced_pod(pod_name, job.metadata.namespace)
        except Exception as error:  # no permission or not in a pod: SIGTERM handling still deletes
            self.say(f"not owning the PyTorchJob by pod {pod_name} ({type(error).__name__}); "
                     "cancellation relies on SIGTERM")
            return
        job.metadata.owner_references = [V1OwnerReference(api_version="v1", kind="Pod", name=pod_name,
                                                          uid=pod.metadata.uid)]

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

    def run(self, job: models.KubeflowOrgV1PyTorchJob, timeout_s: float) -> models.KubeflowOrgV1PyTorchJob:
        """Submit `job` and wait for it; returns the Succeeded job, raises on failure/timeout/cancel."""
        name, namespace = job.metadata.name, job.metadata.namespace
        deadline = self.clock() + timeout_s
        with sigterm_raises():
            self.submit(job)
            try:
                return self._wait(name, namespace, deadline, timeout_s)
            except (StepCancelled, KeyboardInterrupt):
                self.say("step cancelled: deleting the PyTorchJob so that its pods stop")
                self.delete(name, namespace)
                raise

    def _wait(self, name: str, namespace: str, deadline: float,
              timeout_s: float) -> models.KubeflowOrgV1PyTorchJob:
        streamer = MasterLogStreamer(self.client, name, namespace, self.out)
        last_condition = None
        while True:
            try:
                current = self.client.get_job(name, namespace=namespace)
            except (RuntimeError, TimeoutError) as error:
                # The API server restarting must not fail a multi-day job; a deleted job must.
                if _http_status(error) == 404 or self.clock() >= deadline:
                    raise
                self.say(f"reading the PyTorchJob failed ({error}); retrying")
                time.sleep(self.poll_interval_s)
                continue
            conditions = self.client.get_job_conditions(job=current)
            if conditions and conditions[-1].type != last_condition:
                last_condition = conditions[-1].type
                self.say(f"PyTorchJob {namespace}/{name}: {last_condition}")
            streamer.poll()
            if _has(conditions, constants.JOB_CONDITION_SUCCEEDED):
                streamer.join(timeout_s=30)
                return current
            if _has(conditions, constants.JOB_CONDITION_FAILED):
                streamer.join(timeout_s=30)
                raise PyTorchJobFailed(f"PyTorchJob {namespace}/{name} failed: "
                                       f"{failure_reason(self.client, current)}")
            if self.clock() >= deadline:
                self.delete(name, namespace)
                raise TimeoutError(f"PyTorchJob {namespace}/{name} did not finish within {timeout_s:.0f}s; "
                                   "it was deleted (raise the pretraining timeout to wait longer)")
            time.sleep(min(self.poll_interval_s, max(deadline - self.clock(), 0.0)))
