"""The PyTorchJob the launcher builds: the Training Operator's API (the SDK's models) and Kubernetes'
own schema for its pod template."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from kubeflow.training import models
from kubeflow.training.api_client import ApiClient

from pipeline.pretrain_launch import PretrainRequest, job_name, job_spec
from pipeline.pytorchjob import PretrainJobSpec, build_pytorchjob, to_manifest
from trainer.errors import UserError

K8S_VERSION = "1.30"


class _Response:
    def __init__(self, payload: dict) -> None:
        self.data = json.dumps(payload)


def _manifest(**overrides) -> dict:
    settings = {"namespace": "ml", "num_nodes": 3, "gpus_per_node": 8, "s3_secret_name": "unmix-swav-s3",
                "node_selector": {"pool": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                **overrides}
    request = PretrainRequest(images_url="s3://b/run/data/images", dump_url="s3://b/run/pretrain",
                              arch="resnet50", image="registry.example/unmix-swav:1", preset="swav_100ep",
                              **settings)
    return to_manifest(build_pytorchjob(job_spec(request, namespace="ml")))


def test_manifest_round_trips_through_the_training_operator_models():
    manifest = _manifest()
    job = ApiClient().deserialize(_Response(manifest), "KubeflowOrgV1PyTorchJob")
    assert isinstance(job, models.KubeflowOrgV1PyTorchJob)
    assert to_manifest(job) == manifest
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "PyTorchJob"


def test_master_and_workers_with_the_operator_contract():
    spec = _manifest()["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert spec["runPolicy"]["backoffLimit"] > 0 and spec["runPolicy"]["ttlSecondsAfterFinished"] > 0
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["command"] == ["torchrun"]
        assert container["args"][:5] == ["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)",
                                         "-m", "trainer", "pretrain"]
        assert container["args"][container["args"].index("--dump_path") + 1] == "s3://b/run/pretrain"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
        secret_env = {env["name"]: env["valueFrom"]["secretKeyRef"]["name"]
                      for env in container["env"] if "valueFrom" in env}
        assert secret_env == {"AWS_ACCESS_KEY_ID": "unmix-swav-s3", "AWS_SECRET_ACCESS_KEY": "unmix-swav-s3",
                              "AWS_ENDPOINT_URL": "unmix-swav-s3"}
        assert pod["nodeSelector"] == {"pool": "a100"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("gpus", [0, 8])
def test_pod_template_validates_against_kubernetes_schemas(gpus):
    for replica in _manifest(gpus_per_node=gpus)["spec"]["pytorchReplicaSpecs"].values():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "replica"}, **replica["template"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_invalid_pod_template_is_caught_by_the_schema_check():
    replica = _manifest()["spec"]["pytorchReplicaSpecs"]["Master"]
    replica["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = ["eight"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "replica"}, **replica["template"]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_single_node_cpu_job_has_only_a_master_and_no_gpu():
    job = to_manifest(build_pytorchjob(PretrainJobSpec(name="cpu-job", image="t", trainer_args=[],
                                                       num_nodes=1, gpus_per_node=0)))
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert job["spec"]["nprocPerNode"] == "1"
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_job_name_is_stable_per_output_and_a_valid_label():
    assert job_name("s3://b/run1/pretrain") == job_name("s3://b/run1/pretrain")
    assert job_name("s3://b/run1/pretrain") != job_name("s3://b/run2/pretrain")
    with pytest.raises(UserError, match="DNS-1035"):
        build_pytorchjob(PretrainJobSpec(name="Bad_Name", image="t", trainer_args=[]))
