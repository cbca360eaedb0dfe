"""The launching components' helpers: each step's trainer flags, its JobSpec, the up-front check of every
step (one line per bad step, exit 2, in seconds, nothing started), the check step on the run's real JobSpecs."""

from __future__ import annotations

import time

import pytest

from components import jobs
from launch.spec import JobSpec


def test_each_step_writes_under_the_run_root_and_user_flags_come_last():
    assert jobs.dump_url("s3://b/run", "eval-semisup-10pct") == "s3://b/run/eval-semisup-10pct"
    assert jobs.dump_url("s3://b/run", "detr", baseline=True) == "s3://b/run/detr-random"
    argv = jobs.pretrain_argv("s3://b/data", "s3://b/run/pretrain", "resnet50", "swav_100ep", "", ["--epochs", 3],
                              knn_monitor=True)
    assert argv == ["--data_path", "s3://b/data", "--dump_path", "s3://b/run/pretrain", "--arch", "resnet50",
                    "--preset", "swav_100ep", "--knn_eval_path", "s3://b/data", "--epochs", "3"]
    assert jobs.evaluation_argv("eval-semisup-1pct", "d", "b", "o", "resnet50", ["--lr", 0.1])[-4:] == [
        "--labels_perc", "1", "--lr", "0.1"]
    assert jobs.evaluation_argv("detr", "coco", "random", "o", "resnet50", [])[:4] == [
        "--coco_path", "coco", "--pretrained", "random"]
    assert "--labels_perc" not in jobs.evaluation_argv("eval-knn", "d", "b", "o", "resnet50", [])


def test_the_job_is_named_after_the_step_and_its_output():
    spec = jobs.job_spec("detr", "s3://b/run/detr", ["--epochs", "1"], "local", 2, 0,
                         {"image": "t", "node_selector": None, "max_restarts": 1})
    assert spec.name.startswith("unmix-detr-") and spec.namespace == "local"
    assert spec.world_size == 2 and spec.max_restarts == 1 and spec.node_selector == {}
    with pytest.raises(TypeError, match="unknown job options"):
        jobs.job_spec("detr", "o", [], "local", 1, 0, {"image": "t", "eval_gpus": 1})


def _spec(command: str, argv: list[str], nodes: int = 1) -> JobSpec:
    return jobs.job_spec(command, f"/tmp/unused/{command}", argv, "local", nodes, 0, {"image": "t"})


def test_check_steps_names_every_bad_step_and_exits_2(capfd):
    checks = [("pretraining", _spec("pretrain", ["--data_path", "d", "--dump_path", "o", "--epochz", "1"])),
              ("linear evaluation", _spec("eval-linear", ["--data_path", "d", "--dump_path", "o"])),
              ("semi-supervised 1%", _spec("eval-semisup", ["--data_path", "d", "--dump_path", "o",
                                                            "--labels_perc", "1", "--lr", "-1"]))]
    started = time.monotonic()
    with pytest.raises(SystemExit) as ended:
        jobs.check_steps(checks)
    assert ended.value.code == 2 and time.monotonic() - started < 30
    err = capfd.readouterr().err
    assert "error: pretraining (pretrain): unmix-swav pretrain: unrecognized arguments: --epochz 1" in err
    assert "error: semi-supervised 1% (eval-semisup): --lr -1.0 is out of range" in err
    assert "linear evaluation (" not in err
    assert "bad flags in 2 step(s) (pretraining, semi-supervised 1%); nothing was started" in err


def test_check_steps_passes_good_flags(capfd):
    jobs.check_steps([("linear evaluation", _spec("eval-linear", ["--data_path", "d", "--dump_path", "o"], 2))])
    assert "eval-linear flags checked for 2 node(s) x 1 process(es)" in capfd.readouterr().out


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> str:
    from trainer.detr.synthetic_coco import make_shapes_coco

    folder = str(tmp_path_factory.mktemp("coco"))
    make_shapes_coco(folder, train_images=2, val_images=1, image_size=32, seed=0)
    return folder


def check_inputs(storage_root: str, coco: str, **changes) -> dict:
    """The check step's inputs as the DAG wires them (pipeline defaults, CPU nodes, the local launcher)."""
    import inspect

    from components.check_args import check_args
    from pipeline.dag import unmix_swav_pipeline

    defaults = {name: parameter.default
                for name, parameter in inspect.signature(unmix_swav_pipeline.pipeline_func).parameters.items()}
    inputs = {name: defaults[jobs.PIPELINE_PARAMETERS.get(name, name)] for name in check_args.component_spec.inputs
              if jobs.PIPELINE_PARAMETERS.get(name, name) in defaults}
    sizes = {name: 0 for name in inputs if name.endswith("gpus_per_node")}
    return {**inputs, **sizes, "images_url": "/data/images", "detection_url": coco,
            "storage_root": storage_root, "run_id": "run-1", "launcher": "local", **changes}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """A tiny staged dataset with train and val splits (the check step reads its manifest)."""
    from components.staged import stage_images

    return stage_images(str(tmp_path_factory.mktemp("storage")), "builtin:textures", [
        "--num_classes", "2", "--images_per_class", "4", "--val_images_per_class", "2", "--image_size", "16",
        "--workers", "1"])


def test_the_check_step_checks_the_runs_real_jobs_and_refuses_a_bad_memory_per_node(tmp_path, coco, images, capfd):
    """The check step builds every step's JobSpec from the run's job options: a memory_per_node that is no
    Kubernetes quantity fails it (once it passed, built with the defaults, and failed only at a launch)."""
    jobs.check_run(check_inputs(str(tmp_path), coco, images_url=images))  # the pipeline's defaults pass
    assert "eval-semisup flags checked" in capfd.readouterr().out
    with pytest.raises(SystemExit) as ended:
        jobs.check_run(check_inputs(str(tmp_path), coco, images_url=images, memory_per_node="lots"))
    assert ended.value.code == 2
    err = capfd.readouterr().err
    assert "error: pretraining (pretrain): memory_per_node 'lots'" in err  # the message is JobSpec.validate's
    assert "error: DETR transfer (detr): memory_per_node 'lots'" in err
    assert "nothing was started" in err


def test_the_check_step_checks_the_jobs_the_launching_steps_create(tmp_path, coco, monkeypatch):
    """Same JobSpecs (names, flags, options) in the check step as in the launching steps."""
    checked = []
    monkeypatch.setattr(jobs, "check_steps", lambda checks, data: checked.extend(checks))
    inputs = check_inputs(str(tmp_path), coco, queue="team-a", linear_num_nodes=2)
    jobs.check_run(inputs)
    options = jobs.job_options(inputs)
    run_root = f"{tmp_path}/run-1"
    linear = jobs.evaluation_spec("eval-linear", run_root, "/data/images", "", inputs["arch"], [], "local", 2, 0,
                                  options)
    assert dict(checked)["linear evaluation"] == linear and linear.queue == "team-a"
    assert [name for name, _ in checked] == ["pretraining", "kNN evaluation", "linear evaluation",
                                             "semi-supervised 1%", "semi-supervised 10%", "DETR transfer"]


def test_the_check_step_refuses_the_placeholder_storage_root_in_one_line(tmp_path, coco, capfd):
    import inspect

    from components.runtime import STORAGE_ROOT_PLACEHOLDER
    from pipeline.dag import unmix_swav_pipeline

    default = inspect.signature(unmix_swav_pipeline.pipeline_func).parameters["storage_root"].default
    assert default == STORAGE_ROOT_PLACEHOLDER  # the compiled default is no real-looking bucket
    with pytest.raises(SystemExit) as ended:
        jobs.check_run(check_inputs(default, coco))
    assert ended.value.code == 2
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line.startswith("error: storage_root is s3://CHANGE-ME/runs") and "--param storage_root=" in line


def test_the_check_step_plans_pretraining_and_refuses_a_batch_no_gpu_of_the_run_can_hold(tmp_path, coco, images,
                                                                                          capfd):
    """The plan (trainer.plan) for the run's nodes x GPUs of `gpu_type`: printed; a per-GPU batch over the GPU's
    memory fails the check step before any GPU starts, naming the largest batch that fits."""
    big = check_inputs(str(tmp_path), coco, images_url=images, num_nodes=1, gpus_per_node=8, gpu_type="v100-16gb",
                       pretrain_args=["--arch", "resnet50", "--batch_size", "256", "--queue_length", "0"])
    with pytest.raises(SystemExit) as ended:
        jobs.check_run(big)
    assert ended.value.code == 2
    captured = capfd.readouterr()
    assert "DOES NOT FIT" in captured.out
    (line,) = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "does not fit on v100-16gb" in line and "--batch_size" in line and "nothing was started" in line
    jobs.check_run({**big, "gpu_type": "h200", "pretrain_args": ["--arch", "resnet50", "--batch_size", "32",
                                                                  "--queue_length", "0"]})
    assert "fits" in capfd.readouterr().out


def test_with_the_kubernetes_launcher_the_check_step_runs_the_cluster_preflight(tmp_path, coco, images, capfd,
                                                                               monkeypatch):
    """Against a STUBBED Kubernetes API on 127.0.0.1 (tests/launch/fake_kube_api.py; no cluster here), reached through
    KUBECONFIG as the launcher's own client would: a complete cluster passes; without our ClusterTrainingRuntime
    the check step fails in seconds with the preflight's line, before any job exists."""
    import time

    import yaml

    from tests.launch.fake_kube_api import FakeKubeApi

    with FakeKubeApi(namespace="ml", backend="trainjob") as api:  # stub API server
        api.complete_cluster(queue="")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": api.host}}],
            "users": [{"name": "me", "user": {"token": "stub-token"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me", "namespace": "ml"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # the client read KUBECONFIG when it was imported:
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        inputs = check_inputs(str(tmp_path), coco, images_url=images, launcher="kubernetes", job_backend="trainjob",
                              namespace="ml")
        jobs.check_run(inputs)
        assert "[check] cluster ok: [runtime] ClusterTrainingRuntime unmix-swav-torch" in capfd.readouterr().out
        api.objects.pop("/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/unmix-swav-torch")
        started = time.monotonic()
        with pytest.raises(SystemExit) as ended:
            jobs.check_run(inputs)
        seconds = time.monotonic() - started
    captured = capfd.readouterr()
    assert ended.value.code == 2 and seconds < 30
    assert "[check] cluster missing: [runtime] ClusterTrainingRuntime unmix-swav-torch does not exist" in captured.out
    (line,) = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "the cluster lacks what the jobs need (runtime)" in line
    assert not [path for method, path, *_ in api.requests if method == "POST" and "trainjobs" in path]  # no job
    print(f"check step with a missing runtime failed after {seconds:.2f}s")
