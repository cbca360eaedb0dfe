"""The node pod Kubeflow Trainer v2 would create for a TrainJob on our runtime, for schema checks and checkov.

A cluster's trainer controller merges three things into each `node` pod: the runtime's pod template
(k8s/trainer-v2/cluster/runtime.yaml), the TrainJob's `spec.trainer` (image, command, args, env, resources) plus the
torch plugin's PET_* env and port, and the TrainJob's runtime patch (placement, volumes, security contexts,
labels). This does the same merge, field by field, for the fields our manifests use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

RUNTIME = Path(__file__).resolve().parents[2] / "k8s" / "trainer-v2" / "cluster" / "runtime.yaml"
TORCH_PLUGIN_ENV = [
    {"name": "PET_NNODES", "value": "2"}, {"name": "PET_NPROC_PER_NODE", "value": "8"},
    {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
    {"name": "PET_MASTER_ADDR", "value": "job-node-0-0.job"}, {"name": "PET_MASTER_PORT", "value": "29500"}]


def runtime() -> dict[str, Any]:
    return yaml.safe_load(RUNTIME.read_text(encoding="utf-8"))


def node_pod(trainjob: dict[str, Any], runtime_resource: dict[str, Any] | None = None) -> dict[str, Any]:
    runtime_resource = runtime_resource or runtime()
    (node_job,) = runtime_resource["spec"]["template"]["spec"]["replicatedJobs"]
    template = copy.deepcopy(node_job["template"]["spec"]["template"])
    pod = template["spec"]
    (container,) = pod["containers"]
    trainer = trainjob["spec"]["trainer"]
    container.update({"image": trainer["image"], "command": trainer["command"], "args": trainer["args"],
                      "env": [*trainer.get("env", []), *TORCH_PLUGIN_ENV], "resources": trainer["resourcesPerNode"],
                      "ports": [{"containerPort": 29500}]})
    (patch,) = trainjob["spec"]["runtimePatches"]
    (job_patch,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod_patch = job_patch["template"]["spec"]["template"]
    for key, value in pod_patch["spec"].items():
        if key != "containers":
            pod[key] = value
    for container_patch in pod_patch["spec"].get("containers", []):
        assert container_patch["name"] == container["name"]
        container.update({key: value for key, value in container_patch.items() if key != "name"})
    labels = {**template.get("metadata", {}).get("labels", {}), **pod_patch.get("metadata", {}).get("labels", {})}
    metadata = {"name": f"{trainjob['metadata']['name']}-node-0-0", "labels": labels}
    annotations = {**template.get("metadata", {}).get("annotations", {}),
                   **pod_patch.get("metadata", {}).get("annotations", {})}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod}
