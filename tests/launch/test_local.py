"""The harness: the PyTorchJob (or TrainJob) the launcher builds, each replica's container command run here
with the env the Training Operator (or Trainer v2's torch plugin) injects and its restart policy. Proves the
failure semantics: a bad flag ends the job with exit 2 and no restart; a replica killed mid-run restarts the
group, which resumes and ends with the weights of an uninterrupted run; a TrainJob's two nodes train as one
group and a retryable exit restarts both of them."""

from __future__ import annotations

import io
import threading
import time

import pytest
import torch

from launch.backends import build_job
from launch.errors import JobFailed
from launch.local import LocalJob, expand_kubernetes_vars, plan_replicas, run_replicas
from launch.spec import JobSpec
from trainer.run.metrics import read_records

PRETRAIN = ["--arch", "resnet_tiny", "--preset", "demo_cpu", "--batch_size", "8", "--workers", "0",
            "--log_freq", "1", "--checkpoint_every_steps", "1"]
QUIET = {"OMP_NUM_THREADS": "1"}


def _job(data: str, dump: str, extra: list[str], num_nodes: int = 2, max_restarts: int = 3,
         backend: str = "pytorchjob"):
    spec = JobSpec(command="pretrain", name="unmix-pretrain-harness", image="unused-here", num_nodes=num_nodes,
                   gpus_per_node=0, s3_secret_name="unmix-swav-s3", max_restarts=max_restarts, job_backend=backend,
                   trainer_args=("--data_path", data, "--dump_path", dump, *PRETRAIN, *extra))
    return build_job(spec)


def test_kubernetes_var_expansion_rules():
    env = {"MASTER_ADDR": "10.0.0.7"}
    assert expand_kubernetes_vars("--master_addr=$(MASTER_ADDR)", env) == "--master_addr=10.0.0.7"
    assert expand_kubernetes_vars("$(UNDEFINED)", env) == "$(UNDEFINED)"
    assert expand_kubernetes_vars("$$(MASTER_ADDR)", env) == "$(MASTER_ADDR)"


def test_replicas_get_the_operators_env():
    master, worker = plan_replicas(_job("d", "o", []), master_port=29555)
    for replica, rank in ((master, 0), (worker, 1)):
        assert replica.env["WORLD_SIZE"] == "2" and replica.env["PET_NNODES"] == "2"
        assert replica.env["RANK"] == str(rank) and replica.env["PET_NODE_RANK"] == str(rank)
        assert replica.env["PET_NPROC_PER_NODE"] == "1"
        assert replica.env["MASTER_ADDR"] == "127.0.0.1" and replica.env["MASTER_PORT"] == "29555"
        assert replica.env["UNMIX_RUN_ID"] == "unmix-pretrain-harness"
        assert replica.command[:6] == ["python", "-m", "launch.torchrun", "--master_addr=127.0.0.1",
                                       "--master_port=29555", "--max-restarts=0"]
        # Secrets are not resolved locally: no empty AWS_* values may shadow the caller's environment.
        assert not any(name.startswith("AWS_") for name in replica.env)
    assert (master.replica_type, worker.replica_type) == ("Master", "Worker")


def _replace_command(job, code: int):
    for spec in job.spec.pytorch_replica_specs.values():
        container = spec.template.spec.containers[0]
        container.command, container.args = ["python"], ["-c", f"raise SystemExit({code})"]
    return job


@pytest.mark.slow
def test_retryable_exits_restart_the_replica_until_the_budget_is_spent():
    out = io.StringIO()
    local = LocalJob(_replace_command(_job("d", "o", [], num_nodes=1), 138), max_restarts=2, out=out)
    with pytest.raises(JobFailed, match="after 2 restart"):
        local.run(timeout_s=60)
    assert local.exit_codes == {"master-0": [138, 138, 138]}
    assert "restart 2/2: replica master-0 exited with 138 (retryable)" in out.getvalue()


@pytest.mark.slow
def test_a_bad_flag_fails_the_job_at_once_with_exit_2_and_no_restart(shapes_dir, tmp_path):
    out = io.StringIO()
    local = LocalJob(_job(str(shapes_dir), str(tmp_path / "dump"), ["--epochz", "1"]), max_restarts=3, out=out,
                     extra_env=QUIET)
    with pytest.raises(JobFailed) as failure:
        local.run(timeout_s=120)
    assert failure.value.exit_code == 2 and local.restarts == 0
    assert "unrecognized arguments: --epochz 1" in out.getvalue()
    assert "exiting 2 (permanent)" in out.getvalue()


def _run(action, out: io.StringIO):
    try:
        return action()
    except JobFailed as failure:
        pytest.fail(f"{failure}\n{out.getvalue()[-6000:]}")


def _model(dump) -> dict[str, torch.Tensor]:
    return torch.load(dump / "checkpoint.pth.tar", map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_a_replica_killed_mid_run_restarts_the_group_and_ends_with_the_uninterrupted_weights(shapes_dir, tmp_path):
    """Two replicas (Master + Worker) train as one group; killing the worker's whole process tree (a lost
    node) fails the master's next collective (exit 138), both are started again, resume from the step
    checkpoint and end bit-identical to an uninterrupted run. About a minute on 2 cores."""
    extra = ["--epochs", "3"]  # 4 steps per epoch on shapes_dir at 2 x 8
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    out = io.StringIO()
    plain = _run(lambda: run_replicas(_job(str(shapes_dir), str(reference), extra), max_restarts=3, out=out,
                                      timeout_s=300,
                                      extra_env=QUIET), out)
    assert plain.restarts == 0 and "global batch 16" in out.getvalue()  # 2 replicas x 8: one group

    out = io.StringIO()
    local = LocalJob(_job(str(shapes_dir), str(killed), extra), max_restarts=3, out=out, extra_env=QUIET)

    def kill_after_three_steps() -> None:
        while len(read_records(str(killed), "train_step")) < 3 if (killed / "metrics.jsonl").exists() else True:
            time.sleep(0.1)
        local.kill_replica("worker-0")

    threading.Thread(target=kill_after_three_steps, daemon=True).start()
    _run(lambda: local.run(timeout_s=300), out)
    log = out.getvalue()
    assert local.restarts == 1, log[-3000:]
    assert local.exit_codes["worker-0"][0] == 137  # SIGKILL: 128 + 9, retryable
    assert local.exit_codes["master-0"][0] == 138  # its peer was gone: retryable
    assert "resumed from" in log
    steps = [record["step"] for record in read_records(str(killed), "train_step")]
    assert steps[-1] == 12
    expected, got = _model(reference), _model(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_trainjob_nodes_get_the_torch_plugins_env_and_no_rendezvous_flags():
    first, second = plan_replicas(_job("d", "o", [], backend="trainjob"), master_port=29556)
    for replica, rank in ((first, 0), (second, 1)):
        assert {name: replica.env[name] for name in replica.env if name.startswith("PET_")} == {
            "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": "29556"}
        assert "MASTER_ADDR" not in replica.env and "RANK" not in replica.env  # v2 sets only the PET_* ones
        assert replica.command[:4] == ["python", "-m", "launch.torchrun", "--max-restarts=0"]
        assert not any(name.startswith("AWS_") for name in replica.env)
    assert (first.pod_name, second.pod_name) == ("node-0-0", "node-0-1")


@pytest.mark.slow
def test_a_retryable_exit_of_one_trainjob_node_restarts_every_node_until_the_budget_is_spent():
    """JobSet's RestartJobSet: node 1 exits 138, its Job fails (backoffLimit 0), every Job is recreated."""
    job = _job("d", "o", [], backend="trainjob")
    job.spec.trainer.command = ["python"]
    job.spec.trainer.args = ["-c", "import os, time; time.sleep(60 if os.environ['PET_NODE_RANK'] == '0' else 0.5); "
                                   "raise SystemExit(138)"]
    out = io.StringIO()
    local = LocalJob(job, max_restarts=2, out=out, restart_delay_s=0.1)
    started = time.monotonic()
    with pytest.raises(JobFailed, match="after 2 restart"):
        local.run(timeout_s=60)
    assert time.monotonic() - started < 40  # node 0 never ran out its 60 s: it was stopped each time
    # node 0 was stopped (SIGTERM, 143) for each of the 2 group restarts, then once more when the job failed.
    assert local.exit_codes == {"node-0-0": [143, 143], "node-0-1": [138, 138, 138]}
    assert "restart 2/2: replica node-0-1 exited with 138 (retryable); restarting every node" in out.getvalue()


@pytest.mark.slow
def test_a_bad_flag_fails_a_trainjob_at_once_with_exit_2(shapes_dir, tmp_path):
    local = LocalJob(_job(str(shapes_dir), str(tmp_path / "dump"), ["--epochz", "1"], backend="trainjob"),
                     max_restarts=3, out=io.StringIO(), extra_env=QUIET)
    with pytest.raises(JobFailed) as failure:
        local.run(timeout_s=120)
    assert failure.value.exit_code == 2 and local.restarts == 0


@pytest.mark.slow
def test_two_trainjob_nodes_train_as_one_group(shapes_dir, tmp_path):
    out = io.StringIO()
    dump = tmp_path / "dump"
    local = _run(lambda: run_replicas(_job(str(shapes_dir), str(dump), ["--epochs", "1"], backend="trainjob"),
                                      max_restarts=3, out=out, timeout_s=300, extra_env=QUIET), out)
    log = out.getvalue()
    assert local.restarts == 0 and "global batch 16" in log  # 2 nodes x 8: one group of world size 2
    assert "[node-0-0] " in log and "rank 0/2 initialised" in log  # only rank 0 logs
    assert [record["step"] for record in read_records(str(dump), "train_step")][-1] == 4  # 64 images / 16
