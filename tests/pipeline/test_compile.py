"""The compiled pipeline kept in the repo is current, wires every step's own size, retries the launching
steps, caches the deterministic ones, and gives every step its S3 credentials."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.compile import COMPILED_PATH, compile_pipeline

# One `evaluate` component, five tasks (kfp numbers repeated uses), each with its own size parameters.
EVALUATIONS = {"evaluate": "linear", "evaluate-2": "linear", "evaluate-3": "semisup", "evaluate-4": "semisup",
               "evaluate-5": "detr"}
COMMANDS = {"evaluate": "eval-knn", "evaluate-2": "eval-linear", "evaluate-3": "eval-semisup",
            "evaluate-4": "eval-semisup", "evaluate-5": "detr"}
LAUNCHING = ["pretrain", *EVALUATIONS]
ALL_STEPS = ["stage-data", "check-args", *LAUNCHING, "export-model", "run-report"]


def _documents(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _wiring(task: dict) -> dict[str, str | None]:
    return {name: value.get("componentInputParameter") for name, value in task["inputs"]["parameters"].items()}


def test_committed_yaml_is_current(tmp_path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml")
    assert fresh.read_text() == COMPILED_PATH.read_text(), (
        "pipeline/unmix_swav_pipeline.yaml is stale: run `python -m pipeline compile --output "
        "pipeline/unmix_swav_pipeline.yaml` and commit it")


def test_flags_are_checked_before_pretraining_and_evaluations_depend_only_on_pretraining():
    spec, _ = _documents(COMPILED_PATH)
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(ALL_STEPS)
    assert tasks["check-args"]["dependentTasks"] == ["stage-data"]
    assert sorted(tasks["pretrain"]["dependentTasks"]) == ["check-args", "stage-data"]
    for name in EVALUATIONS:
        assert tasks[name]["dependentTasks"] == ["pretrain", "stage-data"]
    # the export after every evaluation (the model card lists them), the report after the export (it links it)
    assert sorted(tasks["export-model"]["dependentTasks"]) == sorted(["pretrain", *EVALUATIONS])
    assert _wiring(tasks["export-model"])["arch"] == "arch"
    assert tasks["export-model"]["inputs"]["parameters"]["linear_url"]["taskOutputParameter"] == {
        "producerTask": "evaluate-2", "outputParameterKey": "metrics_url"}  # eval-linear's
    assert sorted(tasks["run-report"]["dependentTasks"]) == sorted(["pretrain", *EVALUATIONS, "export-model"])


def test_every_distributed_step_gets_its_own_size_and_the_shared_job_options():
    spec, _ = _documents(COMPILED_PATH)
    tasks = spec["root"]["dag"]["tasks"]
    assert _wiring(tasks["pretrain"])["num_nodes"] == "num_nodes"
    assert _wiring(tasks["pretrain"])["gpus_per_node"] == "gpus_per_node"
    for name, prefix in EVALUATIONS.items():
        wiring = _wiring(tasks[name])
        assert wiring["num_nodes"] == f"{prefix}_num_nodes" and wiring["gpus_per_node"] == f"{prefix}_gpus_per_node"
        constant = tasks[name]["inputs"]["parameters"]["command"]["runtimeValue"]["constant"]
        assert constant == COMMANDS[name]
    assert [tasks[f"evaluate-{n}"]["inputs"]["parameters"]["labels_percent"]["runtimeValue"]["constant"]
            for n in (3, 4)] == [1, 10]
    for name in LAUNCHING:
        wiring = _wiring(tasks[name])
        assert wiring["node_selector"] == "gpu_node_selector" and wiring["tolerations"] == "gpu_tolerations"
        for shared in ("image", "s3_secret_name", "queue", "priority_class", "max_restarts", "launcher",
                       "job_backend", "training_runtime"):
            assert wiring[shared] == shared
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["launcher"]["defaultValue"] == "kubernetes"
    assert defaults["job_backend"]["defaultValue"] == "trainjob"  # Kubeflow Trainer v2 by default
    assert defaults["detr_num_nodes"]["defaultValue"] == 2 and defaults["linear_gpus_per_node"]["defaultValue"] == 8
    assert defaults["staged_data"]["defaultValue"] == "" and "eval_gpus" not in defaults


def test_launching_steps_are_retried_with_backoff_and_never_cached_deterministic_ones_are_cached():
    spec, _ = _documents(COMPILED_PATH)
    tasks = spec["root"]["dag"]["tasks"]
    for name in LAUNCHING:
        retry = tasks[name]["retryPolicy"]
        assert retry["maxRetryCount"] >= 1 and retry["backoffDuration"] == "15s" and retry["backoffFactor"] == 2.0
        assert tasks[name]["cachingOptions"] == {}  # enableCache false
    for name in ("stage-data", "run-report"):
        assert tasks[name]["cachingOptions"] == {"enableCache": True}
    for name in ("check-args", "export-model"):  # a bad flag fails once, at once; the export never fails the run
        assert "retryPolicy" not in tasks[name]


def test_the_pipelines_own_pods_request_no_gpus():
    spec, _ = _documents(COMPILED_PATH)
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "accelerator" not in executor["container"].get("resources", {})


def test_every_step_gets_s3_credentials_from_the_secret_parameter():
    _, executors = _documents(COMPILED_PATH)
    for name in ALL_STEPS:
        secrets = executors[f"exec-{name}"]["secretAsEnv"]
        keys = {item["secretKey"] for secret in secrets for item in secret["keyToEnv"]}
        assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
        assert all(secret["secretNameParameter"]["componentInputParameter"] == "s3_secret_name"
                   for secret in secrets)


def test_pod_identity_compiles_the_same_pipeline_without_any_secret(tmp_path):
    """IRSA / Workload Identity: no step mounts the S3 Secret and s3_secret_name defaults to empty (the jobs mount
    none either); everything else is the default pipeline."""
    fresh = compile_pipeline(tmp_path / "pod-identity.yaml", s3_credentials="pod-identity")
    documents = list(yaml.safe_load_all(fresh.read_text(encoding="utf-8")))
    assert len(documents) == 1 and "secretAsEnv" not in fresh.read_text()  # no Kubernetes platform spec left
    spec, _ = _documents(COMPILED_PATH)
    assert spec["root"]["inputDefinitions"]["parameters"]["s3_secret_name"].pop("defaultValue") == "unmix-swav-s3"
    assert documents[0]["root"]["inputDefinitions"]["parameters"]["s3_secret_name"].pop("defaultValue") == ""
    assert documents[0] == spec


def test_image_pull_secrets_reach_every_steps_pod_and_default_the_jobs(tmp_path):
    """A private registry: kfp-kubernetes' imagePullSecret on every step (as kubernetes.set_image_pull_secrets
    writes it), and the jobs' `image_pull_secrets` default; the S3 Secret mounts stay."""
    fresh = compile_pipeline(tmp_path / "private.yaml", image_pull_secrets=["regcred"])
    spec, executors = _documents(fresh)
    assert sorted(executors) == sorted(f"exec-{step}" for step in ALL_STEPS)
    for executor in executors.values():
        assert executor["imagePullSecret"] == [{"secretName": "regcred",
                                                "secretNameParameter": {"runtimeValue": {"constant": "regcred"}}}]
        assert executor["secretAsEnv"]
    assert spec["root"]["inputDefinitions"]["parameters"]["image_pull_secrets"]["defaultValue"] == ["regcred"]
