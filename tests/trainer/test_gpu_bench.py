"""benchmarks/gpu_bench.py: the peak table matches whole GPU names, workers follow the CPUs, --smoke runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"
sys.path.insert(0, str(BENCH.parent))
import gpu_bench  # noqa: E402


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 NVL", 835.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0), ("NVIDIA GH200 480GB", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0), ("NVIDIA A10", 125.0),
    ("NVIDIA A10G", None), ("Tesla V100-SXM2-32GB", None)])
def test_dense_bf16_peaks_by_whole_name(name: str, tflops: float | None) -> None:
    assert gpu_bench.peak_tflops_of(name) == tflops


def test_workers_from_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_bench, "available_cpus", lambda: (224, "affinity mask 224"))
    assert gpu_bench.default_workers() == 16  # capped, not 222
    assert gpu_bench.default_workers(ranks=8) == 16  # 28 CPUs per rank, still capped
    monkeypatch.setattr(gpu_bench, "available_cpus", lambda: (32, "cgroup CPU quota 32"))
    assert gpu_bench.default_workers(ranks=8) == 3


@pytest.mark.parametrize("mode", [[], ["--ddp"]])
@pytest.mark.slow
def test_smoke_runs_the_benchmark_code_on_the_cpu(mode: list[str]) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", *mode], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SwAV + Un-Mix" in done.stdout and "images/s" in done.stdout
