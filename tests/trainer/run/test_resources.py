"""Node sizing from the pod's CPUs (cgroup quota, affinity), the PyTorchJob's settings, the compiler check."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.run import resources
from trainer.run.resources import GIB, cgroup_cpu_limit, compiler_problem, pod_sizing, size_rank


def test_cgroup_quota_v2_v1_and_unlimited(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("3200000 100000\n")
    assert cgroup_cpu_limit(str(v2)) == 32.0
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(v2)) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "v1")) == 2.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(str(tmp_path / "v1")) is None
    assert cgroup_cpu_limit(str(tmp_path / "none")) is None


def test_quota_below_the_affinity_mask_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda: 32.5)
    assert resources.available_cpus() == (32, "cgroup CPU quota 32.5 (affinity mask 64)")
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda: None)
    assert resources.available_cpus() == (64, "affinity mask 64")


def test_an_8_gpu_32_cpu_pod_gets_3_workers_and_1_thread_per_rank() -> None:
    sizing = size_rank(32, 8, on_gpu=True, requested_workers=10)
    assert (sizing.workers, sizing.threads) == (3, 1)
    assert "--workers 10 capped" in sizing.line and "8 x 11 processes" in sizing.line
    assert size_rank(32, 8, on_gpu=True, requested_workers=2).workers == 2  # fewer than fit: kept
    assert size_rank(32, 8, on_gpu=True, requested_workers=0).workers == 0
    assert size_rank(8, 8, on_gpu=True, requested_workers=10).workers == 1  # at least one
    assert size_rank(256, 1, on_gpu=True, requested_workers=64).workers == resources.MAX_WORKERS_PER_RANK
    assert size_rank(32, 8, on_gpu=True, requested_workers=10, threads_given=True).threads is None


def test_cpu_training_keeps_the_requested_workers() -> None:
    sizing = size_rank(2, 1, on_gpu=False, requested_workers=2)
    assert (sizing.workers, sizing.threads) == (2, None)


def test_pod_sizing_for_the_job_spec() -> None:
    pod = pod_sizing(cpus=32, gpus=8, memory=256 * GIB)
    assert pod["workers_per_rank"] == 3 and pod["env"] == {"OMP_NUM_THREADS": "1"}
    # 8 ranks x 3 workers x 4 batches x 64 images x 466,944 bytes = 2.9 GB in flight, twice that rounded up
    assert pod["shm_size"] == "6Gi" and pod["shm_bytes"] == 6 * GIB
    assert "warning" not in pod
    assert "warning" in pod_sizing(cpus=32, gpus=8, memory=32 * GIB)


def test_compiler_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    assert "no C compiler for Triton" in compiler_problem("cuda")
    assert "no C++ compiler for Inductor" in compiler_problem("cpu")
    gcc = tmp_path / "gcc"
    gcc.write_text("#!/bin/sh\n")
    gcc.chmod(0o755)
    assert compiler_problem("cuda") is None
    monkeypatch.setenv("CC", "/nowhere/cc")
    assert "CC=/nowhere/cc" in compiler_problem("cuda")
