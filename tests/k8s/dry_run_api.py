"""tests/launch/fake_kube_api.py's stubbed API server (real HTTP on 127.0.0.1; no cluster exists here), grown by
what the real `kubectl apply --dry-run=server -n NS -f FILE` asks of a server for the kinds k8s/ holds.

It serves its namespace (Active), legacy discovery (/api, /api/v1, /apis, /apis/GROUP/VERSION, each with the
resources' kinds, verbs and scope; kubectl asks for aggregated discovery first and takes this answer too), the
OpenAPI v3 index and one document per group-version whose PATCH operations take the `fieldValidation` query
parameter (so kubectl leaves schema validation to the server, as it does against a 1.27+ API server; this stub does
NOT validate schemas: tests/k8s/test_manifests.py does, with Kubernetes' schemas and the SDK models), the GET of any
object of those resources as a 404 NotFound Status (nothing exists), and a create (POST) that it records (`calls`)
and answers 201 with the body echoed, after the API server's own namespace check: a body whose metadata.namespace
differs from the path's is a 400 BadRequest. PATCH, PUT and DELETE are recorded and answered 404 (no object exists
to change).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.launch.fake_kube_api import FakeKubeApi

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
# kind -> (group/version, resource, namespaced): every kind k8s/ holds or `pipeline job-manifest` prints.
RESOURCES = {
    "Namespace": ("v1", "namespaces", False),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "Secret": ("v1", "secrets", True),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
    "TrainJob": ("trainer.kubeflow.org/v1alpha1", "trainjobs", True),
    "ClusterTrainingRuntime": ("trainer.kubeflow.org/v1alpha1", "clustertrainingruntimes", False),
    "PyTorchJob": ("kubeflow.org/v1", "pytorchjobs", True),
}
GROUP_VERSIONS = sorted({group_version for group_version, _, _ in RESOURCES.values()})
# /api/v1/namespaces/NS/RESOURCE[/NAME] or /apis/GROUP/VERSION/[namespaces/NS/]RESOURCE[/NAME]
OBJECT_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))(?:/namespaces/(?P<ns>[^/]+))?"
                         r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$")
MISMATCH = "the namespace of the provided object does not match the namespace sent on the request"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None = None


def _base(group_version: str) -> str:
    return "/api/v1" if group_version == "v1" else f"/apis/{group_version}"


def _resource_list(group_version: str) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": resource, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                           "verbs": VERBS}
                          for kind, (gv, resource, namespaced) in RESOURCES.items() if gv == group_version]}


def _openapi(group_version: str) -> dict[str, Any]:
    """The part of a group-version's OpenAPI v3 document kubectl reads to decide who validates: each kind's PATCH
    operation, tagged with its group-version-kind, takes `fieldValidation`."""
    group, _, version = group_version.rpartition("/")
    paths = {}
    for kind, (gv, resource, namespaced) in RESOURCES.items():
        if gv == group_version:
            scope = "/namespaces/{namespace}" if namespaced else ""
            paths[f"{_base(gv)}{scope}/{resource}/{{name}}"] = {"patch": {
                "operationId": f"patch{kind}",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.1"}, "paths": paths}


def _status(code: int, reason: str, message: str, **details: str) -> dict[str, Any]:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
              "reason": reason, "code": code}
    return {**status, "details": details} if details else status


class DryRunApi(FakeKubeApi):
    """`calls`: every request, in order, with its query and (for writes) its JSON body."""

    def __init__(self, namespace: str = "team-a") -> None:
        super().__init__(namespace=namespace)
        self.calls: list[Call] = []

    def posts(self) -> list[Call]:
        return [call for call in self.calls if call.method == "POST"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self
        stub = super()._handler()
        served = {_base(gv): _resource_list(gv) for gv in GROUP_VERSIONS}
        served["/api"] = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        groups = sorted({gv.rpartition("/")[0] for gv in GROUP_VERSIONS if gv != "v1"})
        served["/apis"] = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": group, "versions": [{"groupVersion": gv, "version": gv.rpartition("/")[2]}
                                         for gv in GROUP_VERSIONS if gv.startswith(f"{group}/")],
             "preferredVersion": next({"groupVersion": gv, "version": gv.rpartition("/")[2]}
                                      for gv in GROUP_VERSIONS if gv.startswith(f"{group}/"))}
            for group in groups]}
        served["/openapi/v3"] = {"paths": {_base(gv)[1:]: {"serverRelativeURL": f"/openapi/v3{_base(gv)}?hash=0"}
                                           for gv in GROUP_VERSIONS}}
        served |= {f"/openapi/v3{_base(gv)}": _openapi(gv) for gv in GROUP_VERSIONS}
        served[f"/api/v1/namespaces/{api.namespace}"] = {  # kubectl looks the namespace up before a create
            "kind": "Namespace", "apiVersion": "v1", "metadata": {"name": api.namespace},
            "status": {"phase": "Active"}}
        resources = {(gv, resource) for gv, resource, _ in RESOURCES.values()}

        class Handler(stub):  # the base stub's handler: /version and the rest stay as they are
            def _record(self) -> tuple[Call, re.Match[str] | None]:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                call = Call(self.command, url.path, parse_qs(url.query), body)
                api.calls.append(call)
                match = OBJECT_PATH.match(url.path)
                if match and (match["core"] or match["gv"], match["resource"]) not in resources:
                    match = None
                return call, match

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                call, match = self._record()
                if call.path in served:
                    return self._send(200, served[call.path])
                if match and match["name"]:
                    return self._send(404, _status(404, "NotFound", f'{match["resource"]} "{match["name"]}" not found',
                                                   name=match["name"], kind=match["resource"]))
                return super().do_GET()

            def do_POST(self) -> None:  # noqa: N802
                call, match = self._record()
                if not match or match["name"] or not isinstance(call.body, dict):
                    return self._send(404, _status(404, "NotFound", "the server could not find the requested "
                                                                    "resource"))
                created = {**call.body, "metadata": {**call.body.get("metadata", {})}}  # `calls` keeps what came
                if match["ns"] and created["metadata"].setdefault("namespace", match["ns"]) != match["ns"]:
                    return self._send(400, _status(400, "BadRequest", MISMATCH))
                self._send(201, created)

            def _no_object(self) -> None:
                call, match = self._record()
                name = match["name"] if match and match["name"] else call.path
                self._send(404, _status(404, "NotFound", f'"{name}" not found'))

            do_PATCH = do_PUT = do_DELETE = _no_object  # noqa: N815

        return Handler
