"""The compiled pipeline kept in the repo is current and carries each step's Kubernetes settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.compile import COMPILED_PATH, compile_pipeline

EVALUATIONS = ["linear-eval", "semisup-eval", "semisup-eval-2", "detr-transfer"]
ALL_STEPS = ["stage-data", "pretrain", *EVALUATIONS, "report"]


def _documents(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_yaml_is_current(tmp_path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml")
    assert fresh.read_text() == COMPILED_PATH.read_text(), \
        "pipeline/unmix_swav_pipeline.yaml is stale: run `python -m pipeline compile` and commit it"


def test_every_step_is_in_the_dag_and_evaluations_depend_only_on_pretraining():
    spec, _ = _documents(COMPILED_PATH)
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(ALL_STEPS)
    for name in EVALUATIONS:
        assert tasks[name]["dependentTasks"] == ["pretrain", "stage-data"]
    assert sorted(tasks["report"]["dependentTasks"]) == sorted(["pretrain", "stage-data", *EVALUATIONS])


def test_gpu_steps_request_gpus_on_the_gpu_pool_with_shm():
    spec, executors = _documents(COMPILED_PATH)
    for name in EVALUATIONS:
        executor = f"exec-{name}"
        resources = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert "resourceCount" in resources["accelerator"]
        platform = executors[executor]
        assert platform["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "gpu_node_selector"
        assert platform["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "gpu_tolerations"
        assert platform["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm",
                                               "sizeLimit": "8Gi", "volumeName": "dshm"}]


def test_every_step_gets_s3_credentials_from_the_secret_parameter():
    _, executors = _documents(COMPILED_PATH)
    for name in ALL_STEPS:
        secrets = executors[f"exec-{name}"]["secretAsEnv"]
        keys = {item["secretKey"] for secret in secrets for item in secret["keyToEnv"]}
        assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
        assert all(secret["secretNameParameter"]["componentInputParameter"] == "s3_secret_name"
                   for secret in secrets)


def test_pretraining_parameters_reach_the_launcher():
    spec, _ = _documents(COMPILED_PATH)
    inputs = spec["root"]["dag"]["tasks"]["pretrain"]["inputs"]["parameters"]
    wiring = {name: value.get("componentInputParameter") for name, value in inputs.items()}
    assert wiring["num_nodes"] == "num_nodes" and wiring["gpus_per_node"] == "gpus_per_node"
    assert wiring["node_selector"] == "gpu_node_selector" and wiring["tolerations"] == "gpu_tolerations"
    assert wiring["image"] == "image" and wiring["s3_secret_name"] == "s3_secret_name"
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["launcher"]["defaultValue"] == "pytorchjob"
