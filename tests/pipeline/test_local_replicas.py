"""The harness: the PyTorchJob the launcher builds, each replica's container command run here with the
env the Training Operator would inject. Two replicas (Master + Worker) must train together."""

from __future__ import annotations

import io

from pipeline.local_replicas import expand_kubernetes_vars, plan_replicas, run_replicas
from pipeline.pretrain_launch import PretrainRequest, job_spec
from pipeline.pytorchjob import build_pytorchjob
from trainer.run.metrics import read_records


def _job(data: str, dump: str, num_nodes: int = 2):
    request = PretrainRequest(images_url=data, dump_url=dump, arch="resnet_tiny", image="unused-here",
                              preset="demo_cpu", num_nodes=num_nodes, gpus_per_node=0,
                              s3_secret_name="unmix-swav-s3",
                              extra_args=["--epochs", "1", "--batch_size", "8", "--workers", "0",
                                          "--max_steps", "2"])
    return build_pytorchjob(job_spec(request, namespace="local"))


def test_kubernetes_var_expansion_rules():
    env = {"MASTER_ADDR": "10.0.0.7"}
    assert expand_kubernetes_vars("--master_addr=$(MASTER_ADDR)", env) == "--master_addr=10.0.0.7"
    assert expand_kubernetes_vars("$(UNDEFINED)", env) == "$(UNDEFINED)"
    assert expand_kubernetes_vars("$$(MASTER_ADDR)", env) == "$(MASTER_ADDR)"


def test_replicas_get_the_operators_env(tmp_path):
    master, worker = plan_replicas(_job("d", "o", num_nodes=2), master_port=29555)
    for replica, rank in ((master, 0), (worker, 1)):
        assert replica.env["WORLD_SIZE"] == "2" and replica.env["PET_NNODES"] == "2"
        assert replica.env["RANK"] == str(rank) and replica.env["PET_NODE_RANK"] == str(rank)
        assert replica.env["PET_NPROC_PER_NODE"] == "1"
        assert replica.env["MASTER_ADDR"] == "127.0.0.1" and replica.env["MASTER_PORT"] == "29555"
        assert replica.command[:3] == ["torchrun", "--master_addr=127.0.0.1", "--master_port=29555"]
        # Secrets are not resolved locally: no empty AWS_* values may shadow the caller's environment.
        assert not any(name.startswith("AWS_") for name in replica.env)
    assert (master.replica_type, worker.replica_type) == ("Master", "Worker")


def test_the_manifests_command_trains_with_two_replicas(shapes_dir, tmp_path):
    dump = tmp_path / "pretrain"
    out = io.StringIO()
    run_replicas(_job(str(shapes_dir), str(dump)), out=out, timeout_s=240,
                 extra_env={"OMP_NUM_THREADS": "1"})
    log = out.getvalue()
    assert "[master-0]" in log  # only rank 0 logs; the worker shows up in the global batch below
    records = read_records(str(dump), "train_step")
    assert records and all(record["loss"] > 0 for record in records)
    assert (dump / "backbone.pth").stat().st_size > 0
    assert "global batch 16" in log, log[-2000:]  # 2 replicas x batch 8: both ranks joined one group
