"""What we render is valid for every version docs/cluster.md lists as supported (its "Supported versions" table).

No models exist here for Trainer 2.2 or 2.4, JobSet or Kueue (the package index has kubeflow-trainer-api 2.3 only),
so each rule below is written from a release note, changelog or pull request and names it. The rules run over
every TrainJob and runtime in k8s/ (kubectl kustomize) and over what the launcher renders with every option set.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from launch.backends import build_job, to_manifest
from launch.spec import KUEUE_QUEUE_LABEL, JobSpec
from launch.trainjob import API_VERSION, KUEUE_PRIORITY_LABEL
from tests.k8s.kustomize import JOB_SETS, REPO, render_all
from tests.launch.trainjob_pod import RUNTIME

COMPILED = REPO / "pipeline" / "unmix_swav_pipeline.yaml"

# Trainer 2.4 refuses runtimes whose ReplicatedJob names are longer than 20 characters (issue 24, from
# Trainer 2.4's release notes; JobSet puts the name into every Job and pod name).
REPLICATED_JOB_NAME_MAX = 20
# TrainJob spec fields that Trainer 2.2, 2.3 and 2.4 all serve (trainer.kubeflow.org/v1alpha1).
TRAINJOB_SPEC_FIELDS = {"runtimeRef", "trainer", "runtimePatches", "suspend", "managedBy", "initializer"}
# Gone by 2.2: podSpecOverrides (2.0) became podTemplateOverrides (2.1), which kubeflow/trainer#3199 / #3309
# replaced by runtimePatches; spec.labels and spec.annotations went with them (kubeflow/sdk#381).
REMOVED_IN_2_2 = {"podSpecOverrides", "podTemplateOverrides", "labels", "annotations"}
TRAINER_FIELDS_2_2 = {"image", "command", "args", "env", "numNodes", "numProcPerNode", "resourcesPerNode"}


def _trainjobs() -> list[dict[str, Any]]:
    """Every TrainJob in k8s/, and the launcher's with every option that reaches the manifest set."""
    rendered = [resource for resource in render_all(JOB_SETS["trainer-v2"]) if resource["kind"] == "TrainJob"]
    full = JobSpec(command="pretrain", name="unmix-pretrain-all", image="registry.example/unmix:1", num_nodes=2,
                   gpus_per_node=8, namespace="team-a", queue="team-a-queue", priority_class="high",
                   s3_secret_name="unmix-swav-s3", node_selector={"pool": "gpu"},
                   tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                   labels={"team": "vision"}, trainer_args=("--epochs", "1"))
    return [*rendered, to_manifest(build_job(full))]


def _runtime() -> dict[str, Any]:
    return yaml.safe_load(RUNTIME.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_trainjobs_use_only_fields_every_supported_trainer_serves():
    jobs = _trainjobs()
    assert len(jobs) >= 5
    for job in jobs:
        assert job["apiVersion"] == API_VERSION == "trainer.kubeflow.org/v1alpha1"  # 2.0 to 2.4
        assert set(job["spec"]) <= TRAINJOB_SPEC_FIELDS, set(job["spec"]) - TRAINJOB_SPEC_FIELDS
        assert not set(job["spec"]) & REMOVED_IN_2_2
        assert set(job["spec"]["trainer"]) <= TRAINER_FIELDS_2_2
        # numProcPerNode lives under spec.trainer since 2.2 (kubeflow/trainer#3239 removed it from the torch
        # MLPolicy and kept trainJob.spec.trainer.numProcPerNode).
        assert isinstance(job["spec"]["trainer"]["numProcPerNode"], int)


@pytest.mark.slow
def test_runtime_patches_name_only_replicated_jobs_the_runtime_has():
    """Trainer 2.3 merges runtimePatches as a strategic merge patch: a patch naming a ReplicatedJob the runtime
    lacks is appended as a new Job instead of being ignored (kueue#14504), so a typo would start a second group."""
    names = {job["name"] for job in _runtime()["spec"]["template"]["spec"]["replicatedJobs"]}
    for job in _trainjobs():
        patches = job["spec"]["runtimePatches"]
        assert len({patch["manager"] for patch in patches}) == len(patches)  # keyed by manager (trainer#3199)
        for patch in patches:
            for replicated in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                assert replicated["name"] in names


def test_the_runtime_is_valid_for_trainer_2_2_to_2_4_and_jobset_0_6():
    runtime = _runtime()
    assert runtime["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and runtime["kind"] == "ClusterTrainingRuntime"
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        assert len(job["name"]) <= REPLICATED_JOB_NAME_MAX, job["name"]
    # The torch MLPolicy has no numProcPerNode from 2.2 on (kubeflow/trainer#3239): processes come from the TrainJob.
    assert "numProcPerNode" not in (runtime["spec"]["mlPolicy"].get("torch") or {})
    # failurePolicy.rules with onJobFailureReasons: JobSet 0.6 (kubernetes-sigs/jobset#537, #661).
    rules = runtime["spec"]["template"]["spec"]["failurePolicy"]["rules"]
    assert rules and all(set(rule) <= {"name", "action", "onJobFailureReasons", "targetReplicatedJobs"}
                         for rule in rules)
    assert {rule["action"] for rule in rules} <= {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"}


@pytest.mark.slow
def test_kueue_sees_a_queued_trainjob_suspended_with_its_labels():
    """Kueue's TrainJob integration admits a suspended TrainJob named by the queue-name label; it needs
    runtimePatches, so Trainer 2.2 or later (kueue#14886), and Kueue built on Trainer 2.3 needs 2.3 (kueue#14504)."""
    queued = [job for job in _trainjobs() if KUEUE_QUEUE_LABEL in job["metadata"]["labels"]]
    assert queued
    for job in queued:
        assert job["spec"]["suspend"] is True and job["spec"]["runtimePatches"]
        assert job["metadata"]["labels"][KUEUE_PRIORITY_LABEL] == "high"


@pytest.mark.parametrize("name", ["v1", "v1-cpu-smoke"])
@pytest.mark.slow
def test_the_legacy_set_is_training_operator_1_9s_pytorchjob(name):
    """Training Operator 1.9 serves kubeflow.org/v1 PyTorchJob; the models check is in test_manifests."""
    jobs = [resource for resource in render_all(JOB_SETS[name]) if resource["kind"] == "PyTorchJob"]
    assert len(jobs) == 4 and {job["apiVersion"] for job in jobs} == {"kubeflow.org/v1"}
    assert all(job["spec"]["nprocPerNode"].isdigit() for job in jobs)


def test_the_compiled_pipeline_is_kfp_2_ir():
    """Kubeflow Pipelines 2.x backends run pipeline-spec IR 2.1 (kfp SDK 2.x)."""
    spec = next(yaml.safe_load_all(COMPILED.read_text(encoding="utf-8")))
    assert spec["schemaVersion"] == "2.1.0" and spec["sdkVersion"].startswith("kfp-2.")
