"""Fail fast: each distributed command's own checks run without doing any work (trainer.cli.check_command),
and launch.run.run_job refuses a bad flag before it creates anything (against the STUBBED Kubernetes API of
tests/launch/fake_kube_api.py: no request reaches it)."""

from __future__ import annotations

import io
import time

import pytest

from launch.run import run_job
from launch.spec import JobSpec, flag_value
from tests.launch.fake_kube_api import FakeKubeApi
from trainer.cli import check_command
from trainer.errors import UserError

BASE = {"pretrain": ["--data_path", "d", "--dump_path", "o"],
        "eval-linear": ["--data_path", "d", "--dump_path", "o"],
        "eval-semisup": ["--data_path", "d", "--dump_path", "o", "--labels_perc", "1"],
        "detr": ["--coco_path", "c", "--dump_path", "o", "--pretrained", "random"]}


@pytest.mark.parametrize("command, extra, message", [
    ("pretrain", ["--epochz", "3"], "unmix-swav pretrain: unrecognized arguments: --epochz 3"),
    ("pretrain", ["--batch_size", "7", "--queue_length", "100"], "not a multiple of the global batch 14"),
    ("eval-linear", ["--lr", "-1"], "--lr -1.0 is out of range"),
    ("eval-linear", ["--decay_epochs", "80", "60"], "increasing order"),
    ("eval-semisup", ["--labels_perc", "3"], "invalid choice: 3"),
    ("detr", ["--lr_drop", "0"], "--lr_drop 0 is out of range"),
])
def test_every_command_refuses_a_bad_flag_in_one_line(command, extra, message):
    with pytest.raises(UserError) as refused:
        check_command(command, [*BASE[command], *extra], world_size=2)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_world_size_is_part_of_the_check():
    argv = [*BASE["pretrain"], "--batch_size", "8", "--queue_length", "32"]
    check_command("pretrain", argv, world_size=4)  # 32 is a multiple of 8 x 4
    with pytest.raises(UserError, match="8 x 3 processes"):
        check_command("pretrain", argv, world_size=3)


def test_detr_checks_its_annotations(tmp_path):
    with pytest.raises(UserError, match="instances_train2017.json"):
        check_command("detr", ["--coco_path", str(tmp_path), "--dump_path", "o", "--pretrained", "random"], 1)


def test_flag_value_reads_both_spellings_and_the_last_one_wins():
    assert flag_value(["--dump_path", "a", "--dump_path=b"], "--dump_path") == "b"
    assert flag_value(["--dump_path"], "--dump_path") is None


def test_a_bad_flag_fails_before_any_kubernetes_request_and_a_good_one_reaches_it(monkeypatch):
    from kubernetes import client as k8s

    import launch.kube
    from tests.launch.fake_kube_api import condition

    real_api = launch.kube.job_api
    bad = JobSpec(command="pretrain", name="unmix-pretrain-bad", image="t", namespace="ml", num_nodes=4,
                  gpus_per_node=0, job_backend="pytorchjob", trainer_args=(*BASE["pretrain"], "--epochz", "3"))
    with FakeKubeApi() as api:
        monkeypatch.setattr(launch.kube, "job_api", lambda backend, namespace: real_api(
            backend, api_client=k8s.ApiClient(api.configuration()), namespace=namespace))
        api.statuses = [{"conditions": [condition("Succeeded")]}]
        started = time.monotonic()
        with pytest.raises(UserError, match="unrecognized arguments: --epochz 3"):
            run_job(bad, "kubernetes", timeout_s=60, out=io.StringIO())
        seconds = time.monotonic() - started
        assert api.requests == []  # no job, no pod, not even a read
        good = JobSpec(command="pretrain", name="unmix-pretrain-good", image="t", namespace="ml", num_nodes=4,
                       gpus_per_node=0, job_backend="pytorchjob", trainer_args=tuple(BASE["pretrain"]))
        run_job(good, "kubernetes", timeout_s=60, out=io.StringIO())
        assert [job["metadata"]["name"] for job in api.created] == ["unmix-pretrain-good"]
    assert seconds < 30
