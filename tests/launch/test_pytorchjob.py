"""The PyTorchJob each distributed step runs: the Training Operator's API (the SDK's models), Kubernetes' own
schema for its pod template, the restart policy, gang scheduling and the queue."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from kubeflow.training import models
from kubeflow.training.api_client import ApiClient

from launch.pytorchjob import build_pytorchjob, to_manifest
from launch.spec import COMMANDS, KUEUE_QUEUE_LABEL, JobSpec, job_name
from trainer.errors import UserError

K8S_VERSION = "1.30"
ARGS = {"pretrain": ["--data_path", "s3://b/data", "--dump_path", "s3://b/run/pretrain", "--preset", "swav_100ep"],
        "eval-knn": ["--data_path", "s3://b/data", "--pretrained", "s3://b/run/pretrain/backbone.pth",
                     "--dump_path", "s3://b/run/eval-knn"],
        "eval-linear": ["--data_path", "s3://b/data", "--pretrained", "s3://b/run/pretrain/backbone.pth",
                        "--dump_path", "s3://b/run/eval-linear"],
        "eval-semisup": ["--data_path", "s3://b/data", "--pretrained", "s3://b/run/pretrain/backbone.pth",
                         "--dump_path", "s3://b/run/eval-semisup-1pct", "--labels_perc", "1"],
        "detr": ["--coco_path", "s3://b/coco", "--pretrained", "s3://b/run/pretrain/backbone.pth",
                 "--dump_path", "s3://b/run/detr"]}


class _Response:
    def __init__(self, payload: dict) -> None:
        self.data = json.dumps(payload)


def _spec(command: str = "pretrain", **overrides) -> JobSpec:
    settings = {"namespace": "ml", "num_nodes": 3, "gpus_per_node": 8, "s3_secret_name": "unmix-swav-s3",
                "node_selector": {"pool": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                **overrides}
    return JobSpec(command=command, name=job_name(command, ARGS[command][ARGS[command].index("--dump_path") + 1]),
                   image="registry.example/unmix-swav:1", trainer_args=tuple(ARGS[command]), **settings)


def _manifest(command: str = "pretrain", **overrides) -> dict:
    return to_manifest(build_pytorchjob(_spec(command, **overrides)))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_step_round_trips_through_the_training_operator_models(command):
    manifest = _manifest(command)
    job = ApiClient().deserialize(_Response(manifest), "KubeflowOrgV1PyTorchJob")
    assert isinstance(job, models.KubeflowOrgV1PyTorchJob)
    assert to_manifest(job) == manifest
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "PyTorchJob"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("gpus", [0, 8])
def test_every_steps_pod_template_validates_against_kubernetes_schemas(command, gpus):
    for replica in _manifest(command, gpus_per_node=gpus, priority_class="research")["spec"][
            "pytorchReplicaSpecs"].values():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "replica"}, **replica["template"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_invalid_pod_template_is_caught_by_the_schema_check():
    replica = _manifest()["spec"]["pytorchReplicaSpecs"]["Master"]
    replica["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = ["eight"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "replica"}, **replica["template"]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_master_and_workers_run_the_trainer_through_the_exit_code_wrapper(command):
    spec = _manifest(command)["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert spec["runPolicy"]["backoffLimit"] == 3 and spec["runPolicy"]["ttlSecondsAfterFinished"] > 0
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for replica in replicas.values():
        assert replica["restartPolicy"] == "ExitCode"  # 1-127 fail the job, 128-255 recreate the pod
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert [container["command"][0], *container["args"]] == [
            "python", "-m", "launch.torchrun", "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)",
            "--max-restarts=0", "-m", "trainer", command, *ARGS[command]]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["UNMIX_RUN_ID"] == _spec(command).name  # a recreated pod takes over its own run lock
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "6Gi"}} in pod["volumes"]
        secret_env = {item["name"]: item["valueFrom"]["secretKeyRef"]["name"]
                      for item in container["env"] if "valueFrom" in item}
        assert secret_env == dict.fromkeys(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"],
                                           "unmix-swav-s3")
        assert pod["nodeSelector"] == {"pool": "a100"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert replica["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == command


@pytest.mark.parametrize("command", ["pretrain", "eval-linear"])
def test_a_32_cpu_8_gpu_pod_gets_the_node_sizing_and_the_shard_cache(command):
    """trainer.run.resources.pod_sizing(32, 8): 1 intra-op thread, 6Gi of /dev/shm; CPU limit = request; the
    shard cache on its own emptyDir (the root is read-only) with the trainer's cap at 90% of its size."""
    manifest = _manifest(command)
    for replica in manifest["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["OMP_NUM_THREADS"] == "1"
        assert env["UNMIX_SHARD_CACHE"] == "/var/cache/unmix-shards" and env["UNMIX_SHARD_CACHE_GB"] == "45"
        assert container["resources"]["limits"] == container["resources"]["requests"] == {
            "cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}
        assert {"name": "shard-cache", "mountPath": "/var/cache/unmix-shards"} in container["volumeMounts"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "6Gi"}}
        assert volumes["shard-cache"] == {"name": "shard-cache", "emptyDir": {"sizeLimit": "50Gi"}}
        pod_object = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "replica"}, **replica["template"]}
        kubernetes_validate.validate(pod_object, K8S_VERSION, strict=True)
    job = ApiClient().deserialize(_Response(manifest), "KubeflowOrgV1PyTorchJob")
    assert to_manifest(job) == manifest


def test_an_explicit_shm_size_and_shard_cache_size_win():
    pod = _manifest("eval-linear", shm_size="20Gi", shard_cache_size="200Gi")["spec"]["pytorchReplicaSpecs"][
        "Master"]["template"]["spec"]
    volumes = {volume["name"]: volume["emptyDir"] for volume in pod["volumes"]}
    assert volumes["dshm"]["sizeLimit"] == "20Gi" and volumes["shard-cache"]["sizeLimit"] == "200Gi"
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["UNMIX_SHARD_CACHE_GB"] == "180"


@pytest.mark.parametrize("size, cap", [("50Gi", "45"), ("100G", "83.8"), ("1Gi", "0.9"), ("500Mi", "0.4")])
def test_the_shard_cache_cap_is_90_percent_of_the_volume_in_gib(size, cap):
    assert JobSpec(command="pretrain", name="x", image="t", shard_cache_size=size).shard_cache_gb() == cap


def test_a_cpu_node_leaves_threads_to_torch_and_fits_shm_in_its_memory():
    spec = JobSpec(command="pretrain", name="cpu-job", image="t", gpus_per_node=0, cpu_per_node="2",
                   memory_per_node="4Gi")
    env = spec.env()
    assert "OMP_NUM_THREADS" not in env  # training runs in the main process: torch's own threads
    assert env["UNMIX_SHARD_CACHE"] == "/var/cache/unmix-shards" and env["UNMIX_SHARD_CACHE_GB"] == "45"
    assert spec.node_shm_size() == "2Gi"  # pod_sizing's 3Gi, capped at half the memory limit
    pod = to_manifest(build_pytorchjob(spec))["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert {"name": "shard-cache", "emptyDir": {"sizeLimit": "50Gi"}} in pod["volumes"]
    assert {"name": "shard-cache", "mountPath": "/var/cache/unmix-shards"} in pod["containers"][0]["volumeMounts"]


def test_gang_scheduling_takes_every_replica_and_the_queue_and_priority():
    manifest = _manifest(num_nodes=4, queue="team-a", priority_class="research")
    assert manifest["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 4, "queue": "team-a",
                                                                 "priorityClass": "research"}
    assert manifest["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    for replica in manifest["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["priorityClassName"] == "research"


def test_without_a_queue_there_is_no_kueue_label_and_no_priority():
    manifest = _manifest(num_nodes=2)
    assert manifest["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2}
    assert KUEUE_QUEUE_LABEL not in manifest["metadata"]["labels"]
    assert "priorityClassName" not in manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def test_single_node_cpu_job_has_only_a_master_and_no_gpu():
    job = to_manifest(build_pytorchjob(JobSpec(command="eval-linear", name="cpu-job", image="t", num_nodes=1,
                                               gpus_per_node=0)))
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert job["spec"]["nprocPerNode"] == "1"
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_job_name_is_stable_per_step_and_output_and_a_valid_label():
    assert job_name("pretrain", "s3://b/run1/pretrain") == job_name("pretrain", "s3://b/run1/pretrain")
    assert job_name("pretrain", "s3://b/run1/pretrain") != job_name("pretrain", "s3://b/run2/pretrain")
    assert len(job_name("eval-semisup", "s3://b/run1/x")) <= 45
    with pytest.raises(UserError, match="DNS-1035"):
        build_pytorchjob(JobSpec(command="pretrain", name="Bad_Name", image="t"))


@pytest.mark.parametrize("overrides, message", [
    ({"command": "stage"}, "does not run as a distributed job"), ({"num_nodes": 0}, "at least 1 node"),
    ({"gpus_per_node": -1}, "gpus_per_node"), ({"max_restarts": -1}, "max_restarts"),
    ({"memory_per_node": "lots"}, "not a Kubernetes quantity"), ({"shard_cache_size": "lots"}, "shard_cache_size"),
    ({"shard_cache_size": "100k"}, "too small"), ({"shm_size": "8Gi", "memory_per_node": "8Gi"}, "not below")])
def test_bad_specs_are_refused_with_one_line(overrides, message):
    settings = {"command": "pretrain", "name": "unmix-x", "image": "t", **overrides}
    with pytest.raises(UserError, match=message):
        JobSpec(**settings).validate()


def test_one_set_of_defaults_for_the_pipeline_and_the_job_spec():
    import inspect

    from pipeline.dag import unmix_swav_pipeline

    defaults = {name: parameter.default for name, parameter in
                inspect.signature(unmix_swav_pipeline.pipeline_func).parameters.items()}
    spec = JobSpec(command="pretrain", name="x", image="t")
    for name in ("cpu_per_node", "memory_per_node", "shm_size", "gpus_per_node", "queue", "priority_class",
                 "max_restarts"):
        assert defaults[name] == getattr(spec, name), name
    for step in ("linear", "semisup", "detr"):
        assert defaults[f"{step}_gpus_per_node"] == spec.gpus_per_node
