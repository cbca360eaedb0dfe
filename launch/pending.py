"""Why a job exists but its pods do not run, said in the step's log; what cannot cure itself ends the step.

While some pod of the job is Pending (or the job has none yet), each poll reads the pods' `PodScheduled`
conditions and container waiting reasons (from the pod list the launcher read anyway), the Warning events
of the job's objects (pods, Jobs, JobSet: their names start with the job's), and under Kueue the Workload's
`QuotaReserved` / `Admitted` conditions. Each reason is logged once when first seen and again every
`repeat_s` while it holds. An image that cannot be pulled, a missing Secret or ConfigMap and an unknown
LocalQueue end the step at once (exit 2); pods that stay unschedulable, or an admitted job whose controller
makes no pod, for `pending_timeout_s` (counted only while the job is not waiting in its queue) end it with
the scheduler's last message.
Every API call here has a request timeout; an error reading events or Workloads is logged once and
skipped, never fatal (they only explain).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from launch.apierrors import message_of, status_of
from launch.errors import JobFailed
from launch.spec import KUEUE_QUEUE_LABEL

DEFAULT_PENDING_TIMEOUT_S = 30 * 60.0  # JobSpec.pending_timeout_minutes' default
REPEAT_S = 10 * 60.0
REQUEST_TIMEOUT = (5.0, 15.0)  # (connect, read) seconds of every call made here
KUEUE_GROUP, KUEUE_VERSIONS = "kueue.x-k8s.io", ("v1beta2", "v1beta1")
# Container waiting reasons that a wait cannot cure: the image or the pod's config refers to what is not there.
FATAL_WAITING = {"ErrImagePull": "the image cannot be pulled", "ImagePullBackOff": "the image cannot be pulled",
                 "InvalidImageName": "the image name is invalid",
                 "CreateContainerConfigError": "a Secret, ConfigMap or key the pod refers to is missing"}
FIXES = {"the image cannot be pulled": "check the image parameter, that the tag was pushed, and the registry's "
                                       "pull secret",
         "the image name is invalid": "fix the image parameter",
         "a Secret, ConfigMap or key the pod refers to is missing":
             "create it in the job's namespace (k8s/s3-secret.template.yaml) or fix s3_secret_name",
         "unknown LocalQueue": "create the LocalQueue in the job's namespace or fix the queue parameter "
                               "(kubectl get localqueues -n NAMESPACE)"}
_UNKNOWN_QUEUE = re.compile(r"LocalQueue \S* ?doesn't exist")


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def pod_reasons(pods: list[Any]) -> tuple[list[tuple[str, str]], str | None, str | None]:
    """From the pods: (reasons as (key, line)), the fatal line if any, the scheduler's message if a pod is
    unschedulable."""
    reasons: list[tuple[str, str]] = []
    fatal = unschedulable = None
    for pod in pods:
        name = pod.metadata.name
        status = pod.status
        if status is None:
            continue
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                line = f"pod {name} not scheduled: {condition.reason or 'Unschedulable'}: {condition.message or ''}"
                reasons.append((f"sched/{condition.reason}/{condition.message}", line.rstrip(": ")))
                if (condition.reason or "Unschedulable") == "Unschedulable":
                    unschedulable = condition.message or "Unschedulable"
        for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
            waiting = container.state.waiting if container.state else None
            if waiting is None or not waiting.reason or waiting.reason in ("ContainerCreating", "PodInitializing"):
                continue
            line = f"pod {name} container {container.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
            reasons.append((f"wait/{name}/{waiting.reason}", line))
            if waiting.reason in FATAL_WAITING and fatal is None:
                what = FATAL_WAITING[waiting.reason]
                fatal = f"{what} ({line}); {FIXES[what]}"
    return reasons, fatal, unschedulable


def workload_reasons(workload: dict[str, Any]) -> tuple[list[tuple[str, str]], str | None]:
    """The Workload's admission conditions that say why it waits; the fatal line for an unknown LocalQueue."""
    name = (workload.get("metadata") or {}).get("name", "?")
    reasons, fatal = [], None
    for condition in _conditions(workload):
        if condition.get("type") in ("QuotaReserved", "Admitted") and condition.get("status") == "False":
            message = condition.get("message") or condition.get("reason") or ""
            reasons.append((f"wl/{condition.get('type')}/{message}",
                            f"Kueue Workload {name} not admitted: {condition.get('reason', '')}: {message}"))
            if _UNKNOWN_QUEUE.search(message) and fatal is None:
                fatal = f"unknown LocalQueue: Kueue says {message!r}; {FIXES['unknown LocalQueue']}"
    return reasons, fatal


class PendingWatch:
    """Per launched job: explains a job whose pods do not run, and ends it when waiting cannot help."""

    def __init__(self, core_api: k8s.CoreV1Api, custom_api: k8s.CustomObjectsApi, kind: str, name: str,
                 namespace: str, say: Callable[[str], None], clock: Callable[[], float],
                 pending_timeout_s: float = DEFAULT_PENDING_TIMEOUT_S, repeat_s: float | None = None) -> None:
        self.core_api, self.custom_api = core_api, custom_api
        self.kind, self.name, self.namespace, self.say, self.clock = kind, name, namespace, say, clock
        self.pending_timeout_s = pending_timeout_s
        self.repeat_s = REPEAT_S if repeat_s is None else repeat_s
        self._logged: dict[str, float] = {}
        self._skipped: set[str] = set()
        self._unschedulable_since: float | None = None
        self._queued_since: float | None = None
        self._podless_since: float | None = None
        self._last_scheduler_message = ""

    def _once(self, what: str, error: BaseException) -> None:
        if what not in self._skipped:
            self._skipped.add(what)
            status = status_of(error)
            why = "not allowed (403): grant it as k8s/ access does" if status == 403 else message_of(error)
            self.say(f"cannot read {what} to say why the {self.kind} waits: {why}")

    def _log(self, reasons: list[tuple[str, str]]) -> None:
        now = self.clock()
        for key, line in reasons:
            last = self._logged.get(key)
            if last is None or now - last >= self.repeat_s:
                self._logged[key] = now
                self.say(line)

    def _events(self) -> list[tuple[str, str]]:
        try:
            events = self.core_api.list_namespaced_event(self.namespace, field_selector="type=Warning",
                                                         _request_timeout=REQUEST_TIMEOUT).items
        except Exception as error:  # only an explanation: never fails the step
            self._once("events", error)
            return []
        reasons = []
        for event in events:
            involved = event.involved_object
            if involved is None or not (involved.name or "").startswith(self.name):
                continue
            reasons.append((f"ev/{involved.name}/{event.reason}/{event.message}",
                            f"{involved.kind} {involved.name}: {event.reason}: {event.message}"))
        return reasons

    def _workloads(self) -> list[dict[str, Any]]:
        """The job's Workloads: Kueue owns them to the job (or to its JobSet, which has the TrainJob's name)."""
        for version in KUEUE_VERSIONS:
            try:
                found = self.custom_api.list_namespaced_custom_object(
                    KUEUE_GROUP, version, self.namespace, "workloads", _request_timeout=REQUEST_TIMEOUT)
            except Exception as error:
                if status_of(error) == 404:
                    continue  # this Kueue does not serve that version
                self._once("Kueue Workloads", error)
                return []
            return [item for item in found.get("items", [])
                    if any(owner.get("name") == self.name and owner.get("kind") in (self.kind, "JobSet")
                           for owner in (item.get("metadata") or {}).get("ownerReferences") or [])]
        self._once("Kueue Workloads", RuntimeError("the API server serves no kueue.x-k8s.io Workloads"))
        return []

    def poll(self, job: Any, pods: list[Any], suspended: bool) -> None:
        """One poll of a job that has not finished; raises JobFailed when waiting cannot help."""
        now = self.clock()
        if not suspended and self._queued_since is not None:
            self.say(f"{self.kind} {self.namespace}/{self.name} admitted after {now - self._queued_since:.0f}s "
                     "in its queue")
            self._queued_since = None
        waiting = suspended or not pods or any(p.status is None or p.status.phase == "Pending" for p in pods)
        if not waiting:
            self._unschedulable_since = self._podless_since = None
            return
        reasons, fatal, unschedulable = pod_reasons(pods)
        metadata = getattr(job, "metadata", None)
        queue = ((getattr(metadata, "labels", None) or {}).get(KUEUE_QUEUE_LABEL)) if metadata else None
        if queue:
            for workload in self._workloads():
                found, queue_fatal = workload_reasons(workload)
                reasons += found
                fatal = fatal or queue_fatal
        reasons += self._events()
        self._log(reasons)
        if fatal:
            raise JobFailed(f"{self.kind} {self.namespace}/{self.name} cannot start: {fatal}")
        if suspended:  # the queue's wait is the step's timeout's business, not pending_timeout's
            self._queued_since = self._queued_since if self._queued_since is not None else now
            self._unschedulable_since = self._podless_since = None
            return
        self._podless_since = (self._podless_since if self._podless_since is not None else now) if not pods else None
        if self._podless_since is not None and now - self._podless_since >= self.pending_timeout_s:
            raise JobFailed(f"{self.kind} {self.namespace}/{self.name} was admitted but no pod of it appeared in "
                            f"{now - self._podless_since:.1f}s (pending_timeout {self.pending_timeout_s:g}s): its "
                            "controller did not start it (the runtime, JobSet or the operator; the events above say "
                            "more); `python -m pipeline preflight` checks them")
        if unschedulable is None:
            self._unschedulable_since = None
            return
        self._last_scheduler_message = unschedulable
        self._unschedulable_since = self._unschedulable_since if self._unschedulable_since is not None else now
        if now - self._unschedulable_since >= self.pending_timeout_s:
            raise JobFailed(f"{self.kind} {self.namespace}/{self.name} stayed unschedulable for "
                            f"{now - self._unschedulable_since:.1f}s (pending_timeout {self.pending_timeout_s:g}s):"
                            f" {self._last_scheduler_message}; free or add capacity, lower num_nodes/gpus_per_node, "
                            "or fix the node selector and tolerations")
