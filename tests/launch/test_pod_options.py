"""The pod options a real cluster needs, on every job pod of both backends: S3 credentials from a Secret or from the
pod's identity (IRSA / workload identity: a ServiceAccount, no Secret), image pull secrets, extra labels and
annotations, Istio's sidecar off unless asked; bad values refused before any job exists."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from launch.backends import build_job, to_manifest
from launch.spec import S3_SECRET_KEYS, JobSpec
from pipeline.__main__ import main as pipeline_main
from tests.launch.trainjob_pod import node_pod
from trainer.errors import UserError

BACKENDS = ("trainjob", "pytorchjob")
ISTIO = "sidecar.istio.io/inject"


def _spec(backend: str, **options: Any) -> JobSpec:
    return JobSpec(command="pretrain", name="unmix-pretrain-pod", image="registry.example/unmix:1", num_nodes=2,
                   gpus_per_node=0, job_backend=backend, **{"s3_secret_name": "unmix-swav-s3", **options})


def _pods(backend: str, **options: Any) -> list[dict[str, Any]]:
    """Every pod template the job makes (for a TrainJob: the node pod Trainer makes on our runtime)."""
    manifest = to_manifest(build_job(_spec(backend, **options)))
    if backend == "trainjob":
        pod = node_pod(manifest)
        return [{"metadata": pod["metadata"], "spec": pod["spec"]}]
    return [replica["template"] for replica in manifest["spec"]["pytorchReplicaSpecs"].values()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_istio_sidecar_is_off_on_every_job_pod_by_default_and_can_be_turned_on(backend):
    pods = _pods(backend)
    assert len(pods) == (1 if backend == "trainjob" else 2)
    assert all(pod["metadata"]["annotations"][ISTIO] == "false" for pod in pods)
    for pod in _pods(backend, pod_annotations={ISTIO: "true", "example.com/team": "vision"}):
        assert pod["metadata"]["annotations"] == {ISTIO: "true", "example.com/team": "vision"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_pod_identity_mode_mounts_no_secret_and_names_the_service_account(backend):
    for pod in _pods(backend, s3_secret_name="", service_account="unmix-swav-irsa"):
        assert pod["spec"]["serviceAccountName"] == "unmix-swav-irsa"
        for container in pod["spec"]["containers"]:
            assert not [item for item in container["env"] if "valueFrom" in item and "secretKeyRef"
                        in item["valueFrom"]]
            assert not {item["name"] for item in container["env"]} & set(S3_SECRET_KEYS)
    for pod in _pods(backend):  # the default: the keys from the Secret, no ServiceAccount of ours
        (container,) = pod["spec"]["containers"]
        refs = {item["name"]: item["valueFrom"]["secretKeyRef"]["name"] for item in container["env"]
                if "secretKeyRef" in item.get("valueFrom", {})}
        assert refs == {key: "unmix-swav-s3" for key in S3_SECRET_KEYS}
        assert "serviceAccountName" not in pod["spec"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_pull_secrets_and_pod_labels_reach_every_pod(backend):
    for pod in _pods(backend, image_pull_secrets=["regcred", "mirror-cred"], pod_labels={"team": "vision"}):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]
        assert pod["metadata"]["labels"]["team"] == "vision"
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "unmix-swav"  # ours stay
    assert all("imagePullSecrets" not in pod["spec"] for pod in _pods(backend))


@pytest.mark.parametrize(("options", "field"), [
    ({"service_account": "Not_A_Name"}, "service_account"),
    ({"image_pull_secrets": ["regcred", "bad name"]}, r"image_pull_secrets\[1\]"),
    ({"image_pull_secrets": "regcred"}, "image_pull_secrets"),
    ({"pod_labels": {"team": "a" * 64}}, r"pod_labels\[team\]"),
    ({"pod_annotations": {"bad key!": "x"}}, "pod_annotations key"),
    ({"pod_annotations": {ISTIO: False}}, rf"pod_annotations\[{ISTIO}\]"),
])
def test_bad_pod_options_are_refused_with_the_option_named(options, field):
    for backend in BACKENDS:
        with pytest.raises(UserError, match=rf"^{field} .* is not valid"):
            _spec(backend, **options).validate()


def test_job_manifest_flags_set_the_pod_options(capsys):
    argv = ["job-manifest", "pretrain", "--no-check", "--s3-secret", "", "--service-account", "unmix-swav-irsa",
            "--image-pull-secret", "regcred", "--pod-label", "team=vision", "--pod-annotation",
            f"{ISTIO}=true", "--", "--data_path", "s3://b/staged", "--dump_path", "s3://b/runs/1/pretrain"]
    assert pipeline_main(argv) == 0
    pod = node_pod(yaml.safe_load(capsys.readouterr().out))
    assert pod["spec"]["serviceAccountName"] == "unmix-swav-irsa"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["labels"]["team"] == "vision" and pod["metadata"]["annotations"][ISTIO] == "true"
    assert not {item["name"] for item in pod["spec"]["containers"][0]["env"]} & set(S3_SECRET_KEYS)
    assert pipeline_main([*argv[:5], "--service-account", "Bad_Name", *argv[7:]]) == 2
    assert "service_account 'Bad_Name' is not valid" in capsys.readouterr().err
