"""`python -m pipeline` pieces that need no cluster: parameters, where a local run stores, job-manifest."""

from __future__ import annotations

import time

import pytest
import yaml

from launch.spec import KUEUE_QUEUE_LABEL
from pipeline.__main__ import main
from pipeline.compile import parse_params
from pipeline.job_manifest import command_header, header_command
from pipeline.local_run import default_storage_root, pipeline_arguments, without_retries
from trainer import storage
from trainer.errors import UserError

PRETRAIN = ["--data_path", "s3://b/data", "--dump_path", "s3://b/run/pretrain", "--preset", "swav_100ep"]


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
    assert all(arguments[f"{step}_gpus_per_node"] == 0 for step in ("linear", "semisup", "detr"))


def test_a_local_run_retries_no_step_and_the_cluster_pipeline_still_does():
    """kfp's local runner sleeps the retry policy's backoff (15, 30, 60 s) before each attempt; locally a retry
    could only repeat the failure, so run-local runs a copy without retry policies."""
    from pipeline.dag import unmix_swav_pipeline

    def tasks(pipeline):
        return pipeline.pipeline_spec.root.dag.tasks

    local = without_retries(unmix_swav_pipeline)
    assert sorted(tasks(local)) == sorted(tasks(unmix_swav_pipeline))
    assert not any(task.HasField("retry_policy") for task in tasks(local).values())
    assert tasks(unmix_swav_pipeline)["pretrain"].retry_policy.max_retry_count == 3  # the original is untouched


def test_run_local_params_set_any_pipeline_parameter_and_refuse_unknown_ones():
    params = parse_params(["linear_num_nodes=2", 'detr_args=["--epochs", "1"]', "queue=team-a"])
    arguments = pipeline_arguments("tiny", "/tmp/x", params=params)
    assert arguments["linear_num_nodes"] == 2 and arguments["detr_args"] == ["--epochs", "1"]
    assert arguments["queue"] == "team-a"
    with pytest.raises(UserError, match="eval_gpus: not a pipeline parameter"):
        pipeline_arguments("tiny", "/tmp/x", params={"eval_gpus": 1})


def test_job_manifest_prints_the_job_with_the_queue_and_priority(capsys):
    assert main(["job-manifest", "pretrain", "--backend", "pytorchjob", "--num-nodes", "4", "--gpus-per-node", "8",
                 "--queue", "team-a", "--priority-class", "research", "--namespace", "ml", "--", *PRETRAIN]) == 0
    captured = capsys.readouterr()
    job = yaml.safe_load(captured.out)
    assert job["kind"] == "PyTorchJob" and job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 4, "queue": "team-a",
                                                            "priorityClass": "research"}
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["priorityClassName"] == "research"
    assert master["nodeSelector"] == {"nvidia.com/gpu.present": "true"}  # the GPU pool by default
    assert master["containers"][0]["args"][-len(PRETRAIN):] == PRETRAIN
    assert "flags checked for 4 node(s) x 8 process(es)" in captured.err


def test_job_manifest_refuses_a_bad_flag_in_seconds_with_the_trainers_line(capsys):
    started = time.monotonic()
    code = main(["job-manifest", "pretrain", "--num-nodes", "2", "--", *PRETRAIN, "--epochz", "3"])
    seconds = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.strip().splitlines()[-1] == "error: unmix-swav pretrain: unrecognized arguments: --epochz 3"
    assert seconds < 30


def test_job_manifest_needs_a_name_or_a_dump_path(capsys):
    assert main(["job-manifest", "eval-linear", "--no-check", "--", "--data_path", "d"]) == 2
    assert "pass --name, or --dump_path" in capsys.readouterr().err


def test_a_files_header_gives_back_the_command_that_made_it():
    argv = ["detr", "--name", "x", "--no-check", "--", "--coco_path", "s3://b/a b", *["--epochs", "300"] * 12]
    header = command_header(argv)
    assert all(len(line) <= 112 for line in header.splitlines()[1:])
    assert header_command(header + "apiVersion: v1\n") == argv


def test_compile_bakes_a_parameter_default_and_refuses_an_unknown_name(tmp_path):
    from pipeline.compile import compile_pipeline

    path = compile_pipeline(tmp_path / "v1.yaml", defaults={"job_backend": "pytorchjob", "queue": "team-a"})
    spec = next(yaml.safe_load_all(path.read_text()))
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["job_backend"]["defaultValue"] == "pytorchjob" and defaults["queue"]["defaultValue"] == "team-a"
    assert defaults["training_runtime"]["defaultValue"] == "unmix-swav-torch"
    with pytest.raises(UserError, match="job_backnd: not a pipeline parameter"):
        compile_pipeline(tmp_path / "bad.yaml", defaults={"job_backnd": "trainjob"})


def test_job_manifest_prints_a_trainjob_for_trainer_v2_by_default(capsys):
    assert main(["job-manifest", "pretrain", "--training-runtime", "torch-distributed",
                 "--num-nodes", "2", "--queue", "team-a", "--namespace", "ml", "--", *PRETRAIN]) == 0
    captured = capsys.readouterr()
    job = yaml.safe_load(captured.out)
    assert job["kind"] == "TrainJob" and job["metadata"]["namespace"] == "ml"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed" and job["spec"]["suspend"] is True
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["args"][-len(PRETRAIN):] == PRETRAIN
    assert "flags checked for 2 node(s) x 8 process(es)" in captured.err
