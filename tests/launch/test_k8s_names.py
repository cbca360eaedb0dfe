"""Cluster options checked where flags are checked: every Kubernetes-facing value of a JobSpec (names, labels,
image, queue, priority class, tolerations, node selector, quantities, timeouts) is refused with one line naming
the option before any job exists; `job-manifest` and `compile` exit 2 with that line and no traceback."""

from __future__ import annotations

import io

import pytest

from launch import k8s_names
from launch.run import run_job
from launch.spec import JobSpec
from pipeline.__main__ import main as pipeline_main
from trainer.errors import UserError

GOOD_IMAGES = ["t", "unmix-swav", "ghcr.io/org/unmix-swav:1.0", "localhost:5000/a/b_c__d-e:v1.2-rc.3",
               "registry.local:5000/unmix-swav@sha256:" + "a" * 64, "docker.io/library/python:3.11-slim",
               "[::1]:5000/x:y", "Registry.Example.com/team/img"]
BAD_IMAGES = ["", "Unmix-Swav:1", "ghcr.io/org/img:", "img:tag with space", "img@sha256:abc", "/img",
              "img//x", "Team/img", "ghcr.io/org/img:-tag", "img@sha256:" + "a" * 63, "https://ghcr.io/org/img",
              "a" * 256]


@pytest.mark.parametrize("image", GOOD_IMAGES)
def test_image_references_the_registry_grammar_accepts(image):
    k8s_names.check_image("--image", image)


@pytest.mark.parametrize("image", BAD_IMAGES)
def test_image_references_the_registry_grammar_refuses(image):
    with pytest.raises(UserError) as refused:
        k8s_names.check_image("--image", image)
    line = str(refused.value)
    assert line.startswith("--image ") and "\n" not in line and "is not valid: " in line


@pytest.mark.parametrize("value, ok", [
    ("team-a", True), ("a", True), ("0team", True), ("a" * 63, True), ("a" * 64, False), ("Team-a", False),
    ("team_a", False), ("-team", False), ("team-", False), ("team.a", False), ("", False)])
def test_dns_labels(value, ok):
    if ok:
        k8s_names.check_dns_label("namespace", value)
    else:
        with pytest.raises(UserError, match="^namespace .* is not valid: use at most 63 lowercase"):
            k8s_names.check_dns_label("namespace", value)


@pytest.mark.parametrize("value, ok", [
    ("high-priority", True), ("kueue.example.com", True), ("a..b", False), ("a.", False), ("UPPER", False),
    ("a_b", False), ("x" * 254, False)])
def test_dns_subdomains(value, ok):
    assert k8s_names.is_dns_subdomain(value) is ok


@pytest.mark.parametrize("key, ok", [
    ("nvidia.com/gpu.present", True), ("pool", True), ("a_b.c-d", True), ("example.com/" + "a" * 63, True),
    ("example.com/" + "a" * 64, False), ("Bad_Prefix/x", False), ("/x", False), ("a/b/c", False), ("-x", False),
    ("x y", False), ("", False)])
def test_label_keys(key, ok):
    if ok:
        k8s_names.check_label_key("node_selector key", key)
    else:
        with pytest.raises(UserError, match="^node_selector key .* is not valid"):
            k8s_names.check_label_key("node_selector key", key)


@pytest.mark.parametrize("value, ok", [
    ("true", True), ("", True), ("A_1.b-2", True), ("a" * 63, True), ("a" * 64, False), ("-a", False),
    ("a b", False), ("a/b", False)])
def test_label_values(value, ok):
    if ok:
        k8s_names.check_label_value("labels[x]", value)
    else:
        with pytest.raises(UserError, match=r"^labels\[x\] .* is not valid"):
            k8s_names.check_label_value("labels[x]", value)


@pytest.mark.parametrize("text, number", [
    ("32", 32), ("500m", 0.5), ("256Gi", 256 * 2**30), ("1.5G", 1.5e9), ("1e3", 1000), ("2E", 2e18),
    ("+4", 4), (".5", 0.5), ("1Ki", 1024)])
def test_quantities_parse(text, number):
    assert k8s_names.quantity("memory_per_node", text) == pytest.approx(number)


@pytest.mark.parametrize("text", ["lots", "12GB", "-1", "1 Gi", "1gi", "", "1e", "Gi"])
def test_quantities_refused(text):
    with pytest.raises(UserError, match="^memory_per_node .* not a Kubernetes quantity"):
        k8s_names.quantity("memory_per_node", text)


@pytest.mark.parametrize("toleration, named", [
    ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, None),
    ({"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoExecute", "tolerationSeconds": 60}, None),
    ({"operator": "Exists"}, None),
    ({"key": "pool", "value": "a100"}, None),  # operator defaults to Equal, every effect
    ({"key": "gpu", "operator": "Exists", "effect": "NoScheduel"}, "effect"),
    ({"key": "gpu", "operator": "Equals", "effect": "NoSchedule"}, "operator"),
    ({"key": "gpu", "operator": "Exists", "value": "x"}, "value"),
    ({"operator": "Equal", "value": "x"}, "operator"),
    ({"key": "bad key", "operator": "Exists"}, "key"),
    ({"key": "gpu", "operator": "Equal", "value": "a b"}, "value"),
    ({"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}, "tolerationSeconds"),
])
def test_tolerations(toleration, named):
    if named is None:
        k8s_names.check_toleration("tolerations[0]", toleration)
    else:
        with pytest.raises(UserError, match=rf"^tolerations\[0\] {named} .* is not valid"):
            k8s_names.check_toleration("tolerations[0]", toleration)


@pytest.mark.parametrize("seconds, ok", [(60, True), (72 * 3600.0, True), (0, False), (-1, False),
                                         (float("nan"), False), (31 * 24 * 3600, False), (True, False)])
def test_timeouts(seconds, ok):
    if ok:
        k8s_names.check_seconds("timeout (seconds)", seconds)
    else:
        with pytest.raises(UserError, match=r"^timeout \(seconds\) .* is not valid: use a number of seconds"):
            k8s_names.check_seconds("timeout (seconds)", seconds)


BASE = {"command": "pretrain", "name": "unmix-x", "image": "t"}


@pytest.mark.parametrize("overrides, named", [
    ({"namespace": "ML_team"}, "namespace"), ({"image": "Bad Image"}, "image"), ({"queue": "Team_A"}, "queue"),
    ({"queue": "q" * 64}, "queue"), ({"priority_class": "High"}, "priority_class"),
    ({"labels": {"team": "a b"}}, "labels[team]"), ({"node_selector": {"bad key": "x"}}, "node_selector key"),
    ({"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoScheduel"}]}, "tolerations[0] effect"),
    ({"cpu_per_node": "0"}, "cpu_per_node"), ({"memory_per_node": "12GB"}, "memory_per_node"),
    ({"shm_size": "1 Gi"}, "shm_size"), ({"ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished"),
    ({"s3_secret_name": "My_Secret"}, "s3_secret_name")])
def test_job_spec_refuses_every_cluster_value_in_one_line_naming_the_option(overrides, named):
    with pytest.raises(UserError) as refused:
        JobSpec(**{**BASE, **overrides}).validate()
    line = str(refused.value)
    assert line.startswith(named + " ") and "\n" not in line


def test_the_defaults_and_the_gpu_placement_pass():
    from launch.spec import DEFAULT_GPU_NODE_SELECTOR, DEFAULT_GPU_TOLERATIONS

    JobSpec(**BASE, node_selector=DEFAULT_GPU_NODE_SELECTOR, tolerations=DEFAULT_GPU_TOLERATIONS,
            queue="team-a", priority_class="research", labels={"team": "vision"}).validate()


def test_the_launcher_refuses_a_bad_timeout_before_anything_runs():
    with pytest.raises(UserError, match=r"^timeout \(seconds\) 0"):
        run_job(JobSpec(**BASE), "kubernetes", timeout_s=0, out=io.StringIO())


PRETRAIN = ["--data_path", "s3://b/data", "--dump_path", "s3://b/run/pretrain"]


@pytest.mark.parametrize("argv, named", [
    (["job-manifest", "pretrain", "--namespace", "ML_team"], "namespace"),
    (["job-manifest", "pretrain", "--image", "Ghcr.io/Org/Img:1"], "image"),
    (["job-manifest", "pretrain", "--queue", "team_a"], "queue"),
    (["job-manifest", "pretrain", "--priority-class", "Research"], "priority_class"),
    (["job-manifest", "pretrain", "--toleration", "nvidia.com/gpu:NoScheduel"], "tolerations[0] effect"),
    (["job-manifest", "pretrain", "--node-selector", "pool=a b"], "node_selector[pool]"),
    (["job-manifest", "pretrain", "--memory-per-node", "64GB"], "memory_per_node"),
    (["job-manifest", "pretrain", "--backend", "trainjob", "--training-runtime", "Torch"], "training_runtime"),
])
def test_job_manifest_exits_2_with_one_line_naming_the_option(capsys, argv, named):
    code = pipeline_main([*argv, "--no-check", "--", *PRETRAIN])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2 and captured.out == ""
    assert len(errors) == 1 and errors[0].startswith(f"error: {named} "), captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("image", ["UPPER/img:1", "img:", "ghcr.io/org/img@sha256:123"])
def test_compile_refuses_an_invalid_image_with_the_same_grammar(capsys, tmp_path, image):
    code = pipeline_main(["compile", "--image", image, "--output", str(tmp_path / "p.yaml")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: --image {image!r}"), err
    assert "Traceback" not in err and not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("overrides", [{"namespace": "ML"}, {"queue": "Team_A"}, {"image": "Bad Image"},
                                       {"tolerations": [{"key": "gpu", "operator": "Equals"}]}])
def test_a_bad_cluster_value_fails_before_any_kubernetes_request(monkeypatch, overrides):
    from kubernetes import client as k8s

    import launch.kube
    from tests.launch.fake_kube_api import FakeKubeApi

    real_api = launch.kube.job_api
    spec = JobSpec(**{**BASE, "gpus_per_node": 0, "trainer_args": ("--data_path", "d", "--dump_path", "o"),
                      **overrides})
    with FakeKubeApi() as api:
        monkeypatch.setattr(launch.kube, "job_api", lambda backend, namespace: real_api(
            backend, api_client=k8s.ApiClient(api.configuration()), namespace=namespace))
        with pytest.raises(UserError, match=f"^{next(iter(overrides))}"):
            run_job(spec, "kubernetes", timeout_s=60, out=io.StringIO())
        assert api.requests == []  # no job, no pod, not even a read
