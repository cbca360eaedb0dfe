"""A permanent failure is remembered for the step's retries (launch.failures): the retry of the same job fails at
once with the same line and exit code; another JobSpec (fixed flags) or another run is not blocked."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from components import jobs
from launch.errors import JobFailed
from launch.failures import MARKER, check_earlier_failure, record_failure


def _spec(tmp_path, run: str = "run-1", extra: tuple[str, ...] = ()):
    dump = jobs.dump_url(str(tmp_path / run), "pretrain")
    argv = jobs.pretrain_argv(str(tmp_path / "no-such-data"), dump, "resnet_tiny", "demo_cpu", "", [
        "--batch_size", "8", "--workers", "0", *extra], False)
    return jobs.job_spec("pretrain", dump, argv, "local", 1, 0, {"image": "t", "max_restarts": 2})


def test_a_permanent_failure_is_raised_again_for_the_same_job_only(tmp_path):
    spec = _spec(tmp_path)
    record_failure(spec, JobFailed("replica master-0 exited with 2, a permanent failure", exit_code=2))
    marker = tmp_path / "run-1" / "pretrain" / MARKER
    assert json.loads(marker.read_text())["exit_code"] == 2
    with pytest.raises(JobFailed, match="exited with 2.*earlier attempt of this step failed permanently") as again:
        check_earlier_failure(spec)
    assert again.value.exit_code == 2 and "\n" not in str(again.value)
    check_earlier_failure(_spec(tmp_path, run="run-2"))  # another run: another dump, another job
    fixed = _spec(tmp_path, extra=("--epochs", "1"))  # the same run's job with other flags starts
    check_earlier_failure(fixed)
    assert not marker.exists()  # the stale marker is gone


def test_retryable_failures_and_torn_markers_block_nothing(tmp_path):
    spec = _spec(tmp_path)
    record_failure(spec, JobFailed("replica master-0 exited with 138 (retryable) after 2 restarts", exit_code=138))
    marker = tmp_path / "run-1" / "pretrain" / MARKER
    assert not marker.exists()
    marker.parent.mkdir(parents=True)
    marker.write_text('{"job": ')
    check_earlier_failure(spec)
    assert not marker.exists()


@pytest.mark.slow
def test_a_retried_step_whose_job_failed_permanently_fails_again_in_seconds(tmp_path, monkeypatch, capfd):
    """The local launcher, real replicas: the data path does not exist, so pretraining exits 2 after its start
    (the flags pass the check). The retry of the same step (as kfp's retry policy runs it) ends in seconds with
    the same exit code, starting no replica."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = _spec(tmp_path)
    started = time.monotonic()
    with pytest.raises(SystemExit) as first:
        jobs.launch_step(spec, "local", timeout_hours=0.1)
    first_s = time.monotonic() - started
    first_log = capfd.readouterr()
    assert first.value.code == 2 and "[node-0-0]" in first_log.out + first_log.err
    started = time.monotonic()
    with pytest.raises(SystemExit) as retried:
        jobs.launch_step(spec, "local", timeout_hours=0.1)
    retry_s = time.monotonic() - started
    retry_log = capfd.readouterr()
    print(f"first attempt failed in {first_s:.1f}s, its retry in {retry_s:.2f}s")
    assert retried.value.code == 2 and retry_s < first_s
    assert "[node-0-0]" not in retry_log.out + retry_log.err  # no replica was started
    assert "earlier attempt of this step failed permanently" in retry_log.err


def test_on_a_cluster_the_retry_fails_before_any_kubernetes_request_even_when_the_job_is_gone(tmp_path, monkeypatch,
                                                                                            capfd):
    """Against the stubbed Kubernetes API (tests/launch/fake_kube_api.py): the job's master exits 2; the retried
    step finds the marker and makes no request, so it fails fast even after the failed job was deleted (its TTL)."""
    from kubernetes import client as k8s

    import launch.kube
    from tests.launch.fake_kube_api import FakeKubeApi, condition

    monkeypatch.delenv("HOSTNAME", raising=False)
    real_api = launch.kube.job_api
    spec = dataclasses.replace(_spec(tmp_path), namespace="ml", job_backend="pytorchjob")
    with FakeKubeApi() as api:
        monkeypatch.setattr(launch.kube, "job_api", lambda backend, namespace: real_api(
            backend, api_client=k8s.ApiClient(api.configuration()), namespace=namespace))
        api.master_phase = "Failed"
        api.master_terminated = {"exitCode": 2, "reason": "Error"}
        api.statuses = [{"conditions": [condition("Running"), condition("Failed", "PyTorchJobFailed", "failed")]}]
        with pytest.raises(SystemExit) as first:
            jobs.launch_step(spec, "kubernetes", timeout_hours=0.1)
        first_line = capfd.readouterr().err.strip().splitlines()[-1]
        api.requests.clear()
        started = time.monotonic()
        with pytest.raises(SystemExit) as retried:
            jobs.launch_step(spec, "kubernetes", timeout_hours=0.1)
        assert api.requests == [] and time.monotonic() - started < 30
    assert first.value.code == retried.value.code == 2
    retried_line = capfd.readouterr().err.strip().splitlines()[-1]
    assert first_line.startswith("error: ") and retried_line.startswith(first_line)
