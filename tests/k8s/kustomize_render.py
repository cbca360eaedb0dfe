"""A small kustomize renderer for the tests (no kubectl or kustomize binary here).

It implements the subset the manifests under k8s/ use, with kustomize's meaning: `resources` (files
and folders holding a kustomization.yaml), `namespace`, `images` (newName / newTag / digest) and
`patches` as JSON 6902 operations (inline `patch` or `path`) selected by group / version / kind /
name. Anything else in a kustomization is refused, so that the manifests cannot outgrow the test.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    if resource["kind"] == "TrainJob":  # its trainer holds the node container's image
        return [resource["spec"]["trainer"]]
    if resource["kind"] == "PyTorchJob":
        templates = [r["template"] for r in resource["spec"]["pytorchReplicaSpecs"].values()]
    elif resource["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        templates = [resource["spec"]["template"]]
    else:
        templates = []
    for template in templates:
        found += template["spec"].get("containers", []) + template["spec"].get("initContainers", [])
    return found


def _set_image(resource: dict[str, Any], images: list[dict[str, Any]]) -> None:
    for container in _containers(resource):
        name = container["image"].split("@")[0].rsplit(":", 1)[0]
        for image in images:
            if image["name"] != name:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new}@{image['digest']}"
            else:
                tag = image.get("newTag", container["image"].rsplit(":", 1)[-1])
                container["image"] = f"{new}:{tag}"


def _matches(resource: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = resource["apiVersion"].rpartition("/")
    return all([target.get("group", group) == group, target.get("version", version) == version,
                target.get("kind", resource["kind"]) == resource["kind"],
                target.get("name", resource["metadata"]["name"]) == resource["metadata"]["name"]])


def render(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}, which this renderer lacks")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        resources += render(path) if path.is_dir() else _load_documents(path)
    resources = copy.deepcopy(resources)
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load(patch["patch"]) if "patch" in patch else \
            _load_documents(folder / patch["path"])[0]
        selected = [i for i, resource in enumerate(resources) if _matches(resource, patch.get("target", {}))]
        if not selected:
            raise ValueError(f"patch target {patch.get('target')} in {folder} matches no resource")
        for index in selected:
            resources[index] = jsonpatch.apply_patch(resources[index], operations)
    for resource in resources:
        _set_image(resource, kustomization.get("images", []))
        namespace = kustomization.get("namespace")
        if namespace and resource["kind"] not in CLUSTER_SCOPED:
            resource["metadata"]["namespace"] = namespace
            for subject in resource.get("subjects", []):
                if subject["kind"] == "ServiceAccount":
                    subject["namespace"] = namespace
    return resources
