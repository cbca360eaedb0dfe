"""A stubbed Kubernetes API server over real HTTP on 127.0.0.1 (no cluster exists on CI).

It serves the few endpoints the launcher uses, with the API server's paths and JSON shapes: PyTorchJob
create/get/delete under /apis/kubeflow.org/v1 (`backend="pytorchjob"`) or TrainJob create/get/delete under
/apis/trainer.kubeflow.org/v1alpha1 (`backend="trainjob"`), pod list and a following pod log under /api/v1.
A test scripts the job's status over time (`statuses`, one per GET, the last one repeating) and reads back
what the launcher did (`requests`, `created`, `deleted`). A status may carry `_generation` (not sent): for a
PyTorchJob the master pod's uid (the operator recreates a pod under the same name, restartPolicy ExitCode);
for a TrainJob JobSet's restart attempt (new pods, new names, the `jobset.sigs.k8s.io/restart-attempt` label).

For the preflight (launch.preflight) and the pending watch (launch.pending) it also serves, as a test sets
them: /version, discovery (/apis, /apis/GROUP/VERSION from `groups`), any object at its path (`objects`),
nodes (`nodes`), Warning events (`events`), SelfSubjectAccessReviews (allowed unless `denied` holds
"verb resource"), 403 on `forbidden_paths`, an error answer to the job's create (`create_error`), and the
pods' status (`pod_status`) or no pods at all (`pods_exist`). `complete_cluster()` fills in a cluster that
has every piece.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml
from kubernetes import client as k8s

JOBS = {"pytorchjob": "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs",
        "trainjob": "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs"}
CONTAINERS = {"pytorchjob": "pytorch", "trainjob": "node"}
RUNTIME_YAML = Path(__file__).resolve().parents[2] / "k8s" / "trainer-v2" / "cluster" / "runtime.yaml"


def condition(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": reason or f"PyTorchJob{kind}", "message": message,
            "lastTransitionTime": "2025-01-01T00:00:00Z", "lastUpdateTime": "2025-01-01T00:00:00Z"}


def unknown_runtime_denial(runtime: str) -> tuple[int, dict[str, Any]]:
    """The answer to creating a TrainJob on a ClusterTrainingRuntime that does not exist: Trainer's webhook
    (pkg/runtime/core/clustertrainingruntime.go, ValidateObjects) returns field.Invalid, which controller-runtime
    denies with 403 Forbidden, relayed by the API server under the webhook's name."""
    return 403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                 "message": 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
                            f'spec.RuntimeRef: Invalid value: v1alpha1.RuntimeRef{{Name:"{runtime}", '
                            'APIGroup:(*string)(0xc000a1b2c0), Kind:(*string)(0xc000a1b2d0)}: '
                            f'clustertrainingruntimes.trainer.kubeflow.org "{runtime}" not found: specified '
                            'clusterTrainingRuntime must be created before the TrainJob is created'}


class FakeKubeApi:
    def __init__(self, namespace: str = "ml", backend: str = "pytorchjob") -> None:
        self.namespace, self.backend = namespace, backend
        self.statuses: list[dict[str, Any]] = [{"conditions": [condition("Created")]}]
        self.master_log: list[str] = []
        self.master_phase = "Running"
        self.master_terminated: dict[str, Any] | None = None
        self.log_line_delay_s = 0.0
        self.step_pod_name = "unmix-swav-pretrain-step"
        self.step_pod_uid = "0b1c2d3e-0000-4000-8000-000000000001"
        self.step_pod_owner = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "unmix-swav-x7k2p",
                               "uid": "0b1c2d3e-0000-4000-8000-000000000002", "controller": True}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.groups: dict[str, list[str]] = {}  # "group/version" -> resources served
        self.objects: dict[str, dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.denied: set[str] = set()
        self.forbidden_paths: set[str] = set()
        self.create_error: tuple[int, Any] | None = None
        self.pod_status: dict[str, Any] | None = None
        self.pods_exist = True
        self._gets = 0
        self._generation = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def configuration(self) -> k8s.Configuration:
        configuration = k8s.Configuration()
        configuration.host = self.host
        return configuration

    def complete_cluster(self, gpus: int = 8, queue: str = "team-a", secret: str = "unmix-swav-s3") -> FakeKubeApi:
        """A cluster with every piece: both job APIs, JobSet, Kueue, our runtime, the Secret, the LocalQueue,
        one GPU node of the GPU pool, every right allowed."""
        ns = self.namespace
        self.groups = {"trainer.kubeflow.org/v1alpha1": ["trainjobs", "trainjobs/status", "clustertrainingruntimes",
                                                         "trainingruntimes"],
                       "jobset.x-k8s.io/v1alpha2": ["jobsets"], "kubeflow.org/v1": ["pytorchjobs"],
                       "kueue.x-k8s.io/v1beta1": ["localqueues", "workloads", "clusterqueues"]}
        self.objects = {
            "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/unmix-swav-torch":
                yaml.safe_load(RUNTIME_YAML.read_text(encoding="utf-8")),
            f"/api/v1/namespaces/{ns}/secrets/{secret}": {
                "kind": "Secret", "metadata": {"name": secret},
                "data": {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eQ=="}},
            f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{ns}/localqueues/{queue}": {
                "kind": "LocalQueue", "metadata": {"name": queue}, "spec": {"clusterQueue": "gpus"},
                "status": {"conditions": [{"type": "Active", "status": "True"}]}}}
        self.nodes = [{"metadata": {"name": "gpu-node-1", "labels": {"nvidia.com/gpu.present": "true"}},
                       "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
                       "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "96"}}},
                      {"metadata": {"name": "cpu-node-1", "labels": {}}, "spec": {},
                       "status": {"allocatable": {"cpu": "16"}}}]
        return self

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _job_status(self) -> dict[str, Any]:
        with self._lock:
            status = self.statuses[min(self._gets, len(self.statuses) - 1)]
            self._gets += 1
            self._generation = status.get("_generation", self._generation)
        return {key: value for key, value in status.items() if not key.startswith("_")}

    def _pod(self, job_name: str) -> dict[str, Any]:
        container_status: dict[str, Any] = {"name": CONTAINERS[self.backend], "restartCount": 0, "ready": True,
                                            "image": "trainer", "imageID": "", "state": {}}
        if self.master_terminated:
            container_status["state"] = {"terminated": self.master_terminated}
        if self.backend == "trainjob":  # JobSet: <jobset>-<replicated job>-<job index>-<pod index>-<random>
            name = f"{job_name}-node-0-0-{'abcdefghij'[self._generation % 10] * 5}"
            labels = {"jobset.sigs.k8s.io/jobset-name": job_name, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                      "batch.kubernetes.io/job-completion-index": "0",
                      "jobset.sigs.k8s.io/restart-attempt": str(self._generation)}
        else:
            name = f"{job_name}-master-0"
            labels = {"training.kubeflow.org/job-name": job_name, "training.kubeflow.org/job-role": "master"}
        status = self.pod_status or {"phase": self.master_phase, "containerStatuses": [container_status]}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace, "uid": f"pod-uid-{self._generation}",
                             "labels": labels},
                "status": status}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, name: str) -> None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404,
                                 "message": f'{api.backend}s "{name}" not found'})

            def _forbidden(self, path: str) -> None:
                self._send(403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                                 "code": 403, "message": f'{path} is forbidden: User "system:serviceaccount:'
                                                         f'{api.namespace}:default" cannot get it'})

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlparse(self.path)
                api.requests.append(("POST", url.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if url.path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
                    attributes = body["spec"]["resourceAttributes"]
                    resource = attributes["resource"] + (f"/{attributes['subresource']}"
                                                         if attributes.get("subresource") else "")
                    allowed = f"{attributes['verb']} {resource}" not in api.denied
                    return self._send(201, {**body, "status": {"allowed": allowed}})
                if url.path != JOBS[api.backend].format(ns=api.namespace):
                    return self._send(404, {"kind": "Status", "code": 404})
                if api.create_error is not None:
                    code, answer = api.create_error
                    if isinstance(answer, str):  # e.g. a CRD that is not there: the mux's plain text
                        data = answer.encode()
                        self.send_response(code)
                        self.send_header("Content-Type", "text/plain")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return None
                    return self._send(code, answer)
                api.created.append(body)
                api.jobs[body["metadata"]["name"]] = body
                self._send(201, body)

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                api.requests.append(("GET", url.path))
                if url.path in api.forbidden_paths:
                    return self._forbidden(url.path)
                jobs = JOBS[api.backend].format(ns=api.namespace) + "/"
                if url.path.startswith(jobs):
                    name = url.path[len(jobs):]
                    if name not in api.jobs:
                        return self._not_found(name)
                    return self._send(200, {**api.jobs[name], "status": api._job_status()})
                if url.path == f"/api/v1/namespaces/{api.namespace}/pods":
                    selector = parse_qs(url.query).get("labelSelector", [""])[0]
                    job_name = selector.split(",")[0].split("=")[1]
                    items = [api._pod(job_name)] if job_name in api.jobs and api.pods_exist else []
                    return self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                            "items": items})
                if url.path.endswith("/log"):
                    return self._stream_log()
                if url.path == "/version":
                    return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.1"})
                if url.path == "/apis":
                    groups: dict[str, list[str]] = {}
                    for group_version in api.groups:
                        groups.setdefault(group_version.split("/")[0], []).append(group_version.split("/")[1])
                    return self._send(200, {"kind": "APIGroupList", "groups": [
                        {"name": name, "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in versions],
                         "preferredVersion": {"groupVersion": f"{name}/{versions[0]}", "version": versions[0]}}
                        for name, versions in groups.items()]})
                if url.path[len("/apis/"):] in api.groups:
                    return self._send(200, {"kind": "APIResourceList", "groupVersion": url.path[len("/apis/"):],
                                            "resources": [{"name": r, "namespaced": True, "kind": r}
                                                          for r in api.groups[url.path[len("/apis/"):]]]})
                if url.path == "/api/v1/nodes":
                    return self._send(200, {"kind": "NodeList", "metadata": {}, "items": api.nodes})
                if url.path == f"/api/v1/namespaces/{api.namespace}/events":
                    return self._send(200, {"kind": "EventList", "metadata": {}, "items": api.events})
                if url.path in api.objects:
                    return self._send(200, api.objects[url.path])
                pods = f"/api/v1/namespaces/{api.namespace}/pods/"
                if url.path.startswith(pods) and url.path[len(pods):] == api.step_pod_name:
                    return self._send(200, {"apiVersion": "v1", "kind": "Pod",
                                            "metadata": {"name": api.step_pod_name, "uid": api.step_pod_uid,
                                                         "namespace": api.namespace,
                                                         "ownerReferences": [api.step_pod_owner]}})
                self._send(404, {"kind": "Status", "code": 404})

            def _stream_log(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in api.master_log:
                    data = (line + "\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(api.log_line_delay_s)
                self.wfile.write(b"0\r\n\r\n")

            def do_DELETE(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                api.requests.append(("DELETE", url.path))
                name = url.path.rsplit("/", 1)[-1]
                if api.jobs.pop(name, None) is None:
                    return self._not_found(name)
                api.deleted.append(name)
                self._send(200, {"kind": "Status", "status": "Success"})

        return Handler
