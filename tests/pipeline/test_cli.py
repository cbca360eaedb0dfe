"""`python -m pipeline` pieces that need no cluster: parameter parsing and where a local run stores."""

from __future__ import annotations

import pytest

from pipeline.local_run import default_storage_root, pipeline_arguments
from pipeline.submit import parse_params
from trainer import storage
from trainer.errors import UserError


def test_submit_params_are_json_when_they_parse():
    assert parse_params(["num_nodes=4", "storage_root=s3://b/runs", 'gpu_node_selector={"pool": "a100"}']) == {
        "num_nodes": 4, "storage_root": "s3://b/runs", "gpu_node_selector": {"pool": "a100"}}
    with pytest.raises(UserError, match="name=value"):
        parse_params(["num_nodes"])


def test_local_run_uses_a_folder_without_an_s3_endpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert default_storage_root(tmp_path, "unused") == str(tmp_path / "storage")


def test_local_run_uses_s3_when_the_aws_environment_names_an_endpoint(s3_server, tmp_path):
    root = default_storage_root(tmp_path, "unmix-demo-bucket")
    assert root == "s3://unmix-demo-bucket/runs"
    storage.write_text(f"{root}/probe.txt", "ok")  # the bucket was created on the moto server
    assert storage.read_text(f"{root}/probe.txt") == "ok"


def test_local_arguments_run_the_cluster_pipeline_on_cpu_with_the_local_launcher():
    arguments = pipeline_arguments("tiny", "/tmp/x", num_nodes=2)
    assert arguments["launcher"] == "local" and arguments["gpus_per_node"] == 0
    assert arguments["num_nodes"] == 2 and arguments["preset"] == "demo_cpu"
