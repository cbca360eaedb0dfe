"""k8s/: the kustomize base and overlays render, every resource validates (Kubernetes' schemas; the
PyTorchJobs through the Training Operator SDK's models), every job file is exactly what
`python -m pipeline job-manifest` prints for the command in its header, gangs take every replica, pods are
locked down, RBAC is minimal, and checkov passes with the exceptions written in k8s/.checkov.yaml."""

from __future__ import annotations

import json
import os
import subprocess

import kubernetes_validate
import pytest
import yaml
from kubeflow.training.api_client import ApiClient
from kubeflow_trainer_api import models as trainer_models

from launch.pytorchjob import to_manifest
from pipeline.__main__ import main as pipeline_main
from pipeline.job_manifest import header_command
from tests.k8s.kustomize import JOB_SETS, K8S, REPO, TRAINER_V2, V1, V1_GPU, render, render_all
from tests.launch.trainjob_pod import node_pod

V1_TARGETS = [*JOB_SETS["v1"], V1_GPU, *JOB_SETS["v1-cpu-smoke"]]  # every PyTorchJob folder
JOB_FILES = sorted(path for folders in JOB_SETS.values() for folder in folders for path in folder.glob("*.yaml")
                   if path.name != "kustomization.yaml")
EVALUATIONS = {"eval-linear", "eval-semisup", "detr"}
K8S_VERSION = "1.30"


class _Response:
    def __init__(self, payload: dict) -> None:
        self.data = json.dumps(payload)


def _pod_templates(resource: dict) -> list[dict]:
    if resource["kind"] == "PyTorchJob":
        return [replica["template"] for replica in resource["spec"]["pytorchReplicaSpecs"].values()]
    if resource["kind"] == "TrainJob":  # the node pod Trainer v2 makes from it on our runtime
        pod = node_pod(resource)
        return [{"metadata": pod["metadata"], "spec": pod["spec"]}]
    return []


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_job_file_is_what_job_manifest_prints(path, capsys):
    text = path.read_text(encoding="utf-8")
    argv = header_command(text)
    assert argv, f"{path} has no header saying how it was made"
    capsys.readouterr()
    assert pipeline_main(["job-manifest", *argv]) == 0
    printed = capsys.readouterr().out
    assert printed and text.endswith(printed), \
        f"{path} drifted from `python -m pipeline job-manifest`: make it again with the command in its header"


def _steps(resources: list[dict]) -> list[str]:
    return [template["metadata"]["labels"]["app.kubernetes.io/component"] for resource in resources
            for template in _pod_templates(resource)[:1]]


def _args(job: dict) -> list[str]:
    pod = _pod_templates(job)[0]["spec"]
    return pod["containers"][0]["args"] if job["kind"] == "PyTorchJob" else job["spec"]["trainer"]["args"]


@pytest.mark.parametrize("name", JOB_SETS)
@pytest.mark.slow
def test_pretraining_comes_alone_and_the_evaluations_read_its_backbone(name):
    """Applied in the README's order (pretrain, wait, evaluations), no evaluation starts before its backbone exists:
    the first folder holds pretraining only, the second the three evaluations, each reading the backbone the
    pretraining job writes."""
    pretrain_folder, evaluations_folder = JOB_SETS[name]
    (pretrain,) = render(pretrain_folder)
    evaluations = render(evaluations_folder)
    assert _steps([pretrain]) == ["pretrain"] and sorted(_steps(evaluations)) == sorted(EVALUATIONS)
    args = _args(pretrain)
    backbone = f"{args[args.index('--dump_path') + 1].rstrip('/')}/backbone.pth"
    for job in evaluations:
        args = _args(job)
        flag = "--pretrained" if "--pretrained" in args else "--backbone"
        assert args[args.index(flag) + 1] == backbone, (job["metadata"]["name"], args)


@pytest.mark.parametrize("target", [V1 / "access", *V1_TARGETS], ids=lambda path: str(path.relative_to(V1)))
@pytest.mark.slow
def test_every_rendered_resource_validates(target):
    resources = render(target)
    kinds = sorted({resource["kind"] for resource in resources})
    assert kinds == (["PyTorchJob"] if target in V1_TARGETS else ["NetworkPolicy", "Role", "RoleBinding",
                                                                   "ServiceAccount"])
    for resource in resources:
        if resource["kind"] == "PyTorchJob":
            job = ApiClient().deserialize(_Response(resource), "KubeflowOrgV1PyTorchJob")
            assert to_manifest(job) == resource  # nothing the Training Operator's model does not know
            for template in _pod_templates(resource):
                kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                              **template}, K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


@pytest.mark.slow
def test_trainer_v2_resources_validate_against_the_trainer_api_models_and_kubernetes_schemas():
    resources = render_all([TRAINER_V2 / "access", *JOB_SETS["trainer-v2"], TRAINER_V2 / "cluster"])
    kinds = sorted({resource["kind"] for resource in resources})
    assert kinds == ["ClusterTrainingRuntime", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount", "TrainJob"]
    for resource in resources:
        if resource["kind"] == "TrainJob":
            assert trainer_models.TrainerV1alpha1TrainJob.from_dict(resource).to_dict() == resource
            assert resource["spec"]["runtimeRef"]["name"] == "unmix-swav-torch"
            kubernetes_validate.validate(node_pod(resource), K8S_VERSION, strict=True)
        elif resource["kind"] == "ClusterTrainingRuntime":
            assert trainer_models.TrainerV1alpha1ClusterTrainingRuntime.from_dict(resource).to_dict() == resource
            assert resource["metadata"]["name"] == "unmix-swav-torch"
        else:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", V1_TARGETS, ids=lambda path: str(path.relative_to(V1)))
@pytest.mark.slow
def test_gangs_take_every_replica_and_restarts_follow_exit_codes(target):
    for resource in render(target):
        if resource["kind"] != "PyTorchJob":
            continue
        replicas = resource["spec"]["pytorchReplicaSpecs"]
        assert resource["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == sum(
            replica["replicas"] for replica in replicas.values()), resource["metadata"]["name"]
        assert {replica["restartPolicy"] for replica in replicas.values()} == {"ExitCode"}


@pytest.mark.parametrize("target", [*V1_TARGETS, *JOB_SETS["trainer-v2"]], ids=lambda path: str(path.relative_to(K8S)))
@pytest.mark.slow
def test_pods_are_non_root_read_only_with_requests_limits_memory_shm_and_the_shard_cache(target):
    for resource in render(target):
        for template in _pod_templates(resource):
            pod = template["spec"]
            assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False
            assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": pod["volumes"][0]["emptyDir"]
                    ["sizeLimit"]}} == pod["volumes"][0]
            assert {"name": "shard-cache", "emptyDir": {"sizeLimit": "50Gi"}} in pod["volumes"]
            for container in pod["containers"]:
                env = {item["name"]: item.get("value") for item in container["env"]}
                assert env["UNMIX_SHARD_CACHE"] == "/var/cache/unmix-shards" and env["UNMIX_SHARD_CACHE_GB"] == "45"
                assert {"name": "shard-cache", "mountPath": "/var/cache/unmix-shards"} in container["volumeMounts"]
                assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"]
                assert container["securityContext"]["readOnlyRootFilesystem"] is True
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][kind])
                assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


@pytest.mark.slow
def test_overlays_apply_their_changes():
    gpu = {r["metadata"]["name"]: r for r in render(V1_GPU) if r["kind"] == "PyTorchJob"}
    assert list(gpu) == ["unmix-swav-pretrain"]  # pretraining only: the evaluations come after it
    assert gpu["unmix-swav-pretrain"]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    cpu = render_all(JOB_SETS["v1-cpu-smoke"])
    assert len(cpu) == 4
    for resource in cpu:  # no namespace: kubectl apply -n places them (tests/k8s/test_namespaces_and_rbac.py)
        for template in _pod_templates(resource):
            container = template["spec"]["containers"][0]
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
            assert container["image"] == "ghcr.io/unmix-swav/trainer-cpu:0.1.0"
            assert "nodeSelector" not in template["spec"]
    job = next(r for r in cpu if r["metadata"]["name"] == "unmix-swav-pretrain")
    assert job["spec"]["nprocPerNode"] == "1"
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "1Gi"  # the header's explicit --shm-size
    assert "OMP_NUM_THREADS" not in {item["name"] for item in pod["containers"][0]["env"]}
    gpu_pod = gpu["unmix-swav-pretrain"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert gpu_pod["volumes"][0]["emptyDir"]["sizeLimit"] == "6Gi"  # pod_sizing(32 CPUs, 8 GPUs)
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in gpu_pod["containers"][0]["env"]
    args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--preset") + 1] == "demo_cpu"


READS = {("", "events"), ("", "secrets"), ("kueue.x-k8s.io", "localqueues"), ("kueue.x-k8s.io", "workloads")}


def _granted(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.mark.slow
def test_role_grants_only_what_the_launcher_needs():
    (role,) = [r for r in render(V1 / "access") if r["kind"] == "Role"]
    granted = _granted(role)
    assert {(g, r) for g, r, _ in granted} == {("kubeflow.org", "pytorchjobs"),
                                                ("kubeflow.org", "pytorchjobs/status"),
                                                ("", "pods"), ("", "pods/log"), *READS}
    assert not any("*" in item for item in granted)
    assert {v for g, r, v in granted if r.startswith("pods")} <= {"get", "list", "watch"}
    assert {v for g, r, v in granted if (g, r) in READS} <= {"get", "list"}  # reads only
    (secret_rule,) = [rule for rule in role["rules"] if "secrets" in rule["resources"]]
    assert secret_rule["resourceNames"] == ["unmix-swav-s3"] and secret_rule["verbs"] == ["get"]  # not every Secret
    (v2_role,) = [r for r in render(TRAINER_V2 / "access") if r["kind"] == "Role"]
    v2_granted = {(group, resource) for group, resource, _ in _granted(v2_role)}
    assert v2_granted == {("trainer.kubeflow.org", "trainjobs"), ("trainer.kubeflow.org", "trainjobs/status"),
                          ("", "pods"), ("", "pods/log"), *READS}


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
@pytest.mark.slow
def test_the_access_folders_grant_every_right_the_launcher_and_the_preflight_check(backend):
    from launch.preflight import PreflightOptions, rights

    needed, optional = rights(PreflightOptions(backend=backend, queue="team-a"))
    (role,) = [r for r in render(TRAINER_V2 / "access" if backend == "trainjob" else V1 / "access")
               if r["kind"] == "Role"]
    (cluster_role,) = render(K8S / "cluster-read")
    kubernetes_validate.validate(cluster_role, K8S_VERSION, strict=True)
    in_namespace, cluster = _granted(role), _granted(cluster_role)
    for verb, group, resource in needed:
        assert (group, resource, verb) in in_namespace, (verb, group, resource)
    for verb, group, resource, namespaced, _ in optional:
        assert (group, resource, verb) in (in_namespace if namespaced else cluster), (verb, group, resource)
    assert cluster == {("", "nodes", "list"), ("trainer.kubeflow.org", "clustertrainingruntimes", "get")}


def test_secret_template_holds_no_values():
    (secret,) = yaml.safe_load_all((K8S / "s3-secret.template.yaml").read_text())
    assert secret["kind"] == "Secret" and "data" not in secret
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(value == "" for value in secret["stringData"].values())


@pytest.mark.slow
def test_checkov_passes_on_the_rendered_overlays(tmp_path):
    checkov = REPO / ".venv-tools" / "bin" / "checkov"
    if not checkov.exists():
        pytest.skip("checkov is not installed: run k8s/tools-venv.sh (make test does) first")
    # Nothing in k8s/ names a namespace: each set is checked in one, as `kubectl apply -n unmix-swav` puts it.
    def _in_namespace(resources: list[dict]) -> list[dict]:
        for resource in resources:
            resource["metadata"]["namespace"] = "unmix-swav"
        return resources

    for target in [V1 / "access", V1_GPU, JOB_SETS["v1"][1], *JOB_SETS["v1-cpu-smoke"]]:
        name = "-".join(target.relative_to(V1).parts)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(_in_namespace(render(target))))
    # checkov does not know TrainJobs: it checks the node Jobs Trainer v2 makes from them on our runtime instead.
    rendered_v2 = render_all([TRAINER_V2 / "access", *JOB_SETS["trainer-v2"]])
    v2 = [resource for resource in rendered_v2 if resource["kind"] != "TrainJob"]
    for resource in rendered_v2:
        if resource["kind"] == "TrainJob":
            pod = node_pod(resource)
            v2.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{pod['metadata']['name']}"},
                       "spec": {"backoffLimit": 0, "template": {"metadata": pod["metadata"], "spec": pod["spec"]}}})
    for resource in v2:
        resource["metadata"]["namespace"] = "unmix-swav"
    (tmp_path / "trainer-v2.yaml").write_text(yaml.safe_dump_all(v2))
    secret = yaml.safe_load((K8S / "s3-secret.template.yaml").read_text())
    (tmp_path / "secret.yaml").write_text(yaml.safe_dump_all(_in_namespace([secret])))
    (tmp_path / "cluster-read.yaml").write_text(yaml.safe_dump_all(render(K8S / "cluster-read")))
    result = subprocess.run([str(checkov), "--config-file", str(K8S / ".checkov.yaml"), "-d", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("folders", [JOB_SETS["v1"], [*JOB_SETS["trainer-v2"], TRAINER_V2 / "cluster"]],
                         ids=lambda paths: paths[0].parent.name)
@pytest.mark.slow
def test_an_images_override_retargets_every_job_and_the_runtime(folders, tmp_path):
    """What users write in their own overlay: one `images:` entry moves every pod of every step to their registry."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(path, tmp_path) for path in folders],
        "images": [{"name": "ghcr.io/unmix-swav/trainer", "newName": "registry.example/team/unmix", "newTag": "1.2"}]}))
    images = []
    for resource in render(tmp_path):
        if resource["kind"] == "TrainJob":
            images.append(resource["spec"]["trainer"]["image"])
        for template in _pod_templates(resource) if resource["kind"] == "PyTorchJob" else []:
            images += [container["image"] for container in template["spec"]["containers"]]
        if resource["kind"] == "ClusterTrainingRuntime":
            for job in resource["spec"]["template"]["spec"]["replicatedJobs"]:
                images += [c["image"] for c in job["template"]["spec"]["template"]["spec"]["containers"]]
    assert len(images) >= 4 and set(images) == {"registry.example/team/unmix:1.2"}, images
