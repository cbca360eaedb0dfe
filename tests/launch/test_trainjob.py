"""The TrainJob each distributed step runs on Kubeflow Trainer v2: the trainer-api models (the SDK's), the node
pod it makes on our runtime checked against Kubernetes' schema, the torch plugin's rules, queue and priority."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubeflow_trainer_api import models

from launch.backends import build_job, to_manifest
from launch.errors import is_retryable
from launch.spec import COMMANDS, KUEUE_QUEUE_LABEL, JobSpec
from launch.trainjob import KUEUE_PRIORITY_LABEL, build_trainjob
from tests.launch.test_pytorchjob import ARGS, K8S_VERSION
from tests.launch.test_pytorchjob import _spec as pytorchjob_spec
from tests.launch.trainjob_pod import node_pod, runtime
from trainer.errors import UserError

TORCHRUN_RESERVED = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}


def _spec(command: str = "pretrain", **overrides) -> JobSpec:
    """The PyTorchJob tests' spec (3 nodes x 8 GPUs, a node pool, the S3 Secret) with the TrainJob backend."""
    return pytorchjob_spec(command, **{"job_backend": "trainjob", **overrides})


def _manifest(command: str = "pretrain", **overrides) -> dict:
    return to_manifest(build_job(_spec(command, **overrides)))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_step_round_trips_through_the_trainer_api_models(command):
    manifest = _manifest(command)
    job = models.TrainerV1alpha1TrainJob.from_dict(manifest)
    assert to_manifest(job) == manifest  # nothing Kubeflow Trainer's API does not know
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and manifest["kind"] == "TrainJob"
    assert manifest["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                              "name": "unmix-swav-torch"}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("gpus", [0, 8])
def test_every_steps_node_pod_on_our_runtime_validates_against_kubernetes_schemas(command, gpus):
    kubernetes_validate.validate(node_pod(_manifest(command, gpus_per_node=gpus)), K8S_VERSION, strict=True)


def test_a_bad_node_pod_is_caught_by_the_schema_check():
    manifest = _manifest()
    manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]["cpu"] = ["eight"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(node_pod(manifest), K8S_VERSION, strict=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_node_runs_the_trainer_through_the_exit_code_wrapper_with_the_same_pod_as_v1(command):
    manifest = _manifest(command)
    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 8
    # torchrun finds the master from the PET_* env the torch plugin injects: no rendezvous flags.
    assert [*trainer["command"], *trainer["args"]] == [
        "python", "-m", "launch.torchrun", "--max-restarts=0", "-m", "trainer", command, *ARGS[command]]
    env = {item["name"]: item.get("value") for item in trainer["env"]}
    assert not TORCHRUN_RESERVED & set(env)  # the Trainer's webhook refuses a TrainJob that sets them
    assert env["UNMIX_RUN_ID"] == _spec(command).name and env["OMP_NUM_THREADS"] == "1"
    secret_env = {item["name"]: item["valueFrom"]["secretKeyRef"]["name"] for item in trainer["env"]
                  if "valueFrom" in item}
    assert secret_env == dict.fromkeys(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"],
                                       "unmix-swav-s3")
    assert trainer["resourcesPerNode"]["limits"] == trainer["resourcesPerNode"]["requests"] == {
        "cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}
    pod = node_pod(manifest)
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node" and pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["nodeSelector"] == {"pool": "a100"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "6Gi"}}
    assert volumes["shard-cache"] == {"name": "shard-cache", "emptyDir": {"sizeLimit": "50Gi"}}
    assert {"name": "shard-cache", "mountPath": "/var/cache/unmix-shards"} in container["volumeMounts"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == command
    # The same container as the PyTorchJob's, bar the name and the rendezvous flags.
    v1 = to_manifest(build_job(_spec(command, job_backend="pytorchjob")))["spec"]["pytorchReplicaSpecs"]["Master"]
    v1_container = v1["template"]["spec"]["containers"][0]
    assert v1_container["env"] == trainer["env"] and v1_container["volumeMounts"] == container["volumeMounts"]
    assert v1["template"]["spec"]["volumes"] == pod["spec"]["volumes"]
    assert v1_container["securityContext"] == container["securityContext"]


def test_the_runtime_fails_at_once_on_permanent_exit_codes_and_restarts_the_group_on_retryable_ones():
    """The runtime draws the line of launch.errors.is_retryable (the v1 operator's ExitCode policy)."""
    resource = runtime()
    spec = resource["spec"]
    assert resource["kind"] == "ClusterTrainingRuntime" and spec["mlPolicy"]["torch"] == {}
    assert resource["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    (node_job,) = spec["template"]["spec"]["replicatedJobs"]
    job = node_job["template"]["spec"]
    assert node_job["name"] == "node" and job["backoffLimit"] == 0
    # The torch plugin finds the trainer's Job (numNodes, PET_* env) by this label.
    assert node_job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "In"
    assert rule["onExitCodes"]["containerName"] == "node"
    assert rule["onExitCodes"]["values"] == [code for code in range(1, 256) if not is_retryable(code)]
    policy = spec["template"]["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == JobSpec(command="pretrain", name="x", image="t").max_restarts
    assert policy["rules"] == [{"name": "permanent-exit-code", "action": "FailJobSet",
                                "onJobFailureReasons": ["PodFailurePolicy"]}]
    # Nothing the Trainer's API does not know, and a Job that Kubernetes' schema accepts.
    assert models.TrainerV1alpha1ClusterTrainingRuntime.from_dict(resource).to_dict() == resource
    kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "node"},
                                  "spec": job}, K8S_VERSION, strict=True)


def test_a_queue_suspends_the_job_for_kueue_and_a_priority_class_names_kueues_priority():
    manifest = _manifest(queue="team-a", priority_class="research")
    assert manifest["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    assert manifest["metadata"]["labels"][KUEUE_PRIORITY_LABEL] == "research"
    assert manifest["spec"]["suspend"] is True  # Kueue admits the whole job (every node) by resuming it
    plain = _manifest()
    assert KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"] and "suspend" not in plain["spec"]


def test_a_cpu_job_runs_one_process_per_node_and_requests_no_gpu():
    manifest = _manifest("eval-linear", num_nodes=1, gpus_per_node=0, node_selector={}, tolerations=[])
    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == 1 and trainer["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
    assert "nodeSelector" not in node_pod(manifest)["spec"]


@pytest.mark.parametrize("overrides, message", [
    ({"job_backend": "mpijob"}, "job backend 'mpijob' is not known"),
    ({"training_runtime": "Torch_Distributed"}, "not a ClusterTrainingRuntime name")])
def test_bad_backends_and_runtimes_are_refused_with_one_line(overrides, message):
    with pytest.raises(UserError, match=message):
        build_trainjob(_spec(**overrides))
