"""`make gpu-bench` stores images/s by GPU kind; the planner then calls its throughput `measured` (no GPU here: the
benchmark's writer is called with the numbers a GPU run would pass it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from trainer.plan import gpus, throughput

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCH))
import gpu_bench  # noqa: E402


@pytest.mark.parametrize(("name", "kind"), [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("Tesla V100-SXM2-32GB", "v100-32gb"),
    ("Tesla V100-SXM2-16GB", "v100-16gb"),
    ("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4"), ("NVIDIA GH200 480GB", "h200"), ("NVIDIA RTX 6000 Ada", None)])
def test_cuda_names_map_to_gpu_kinds(name: str, kind: str | None) -> None:
    assert gpus.kind_of(name) == kind


def test_a_stored_benchmark_makes_the_throughput_measured(tmp_path: Path) -> None:
    results = tmp_path / "results" / "gpu_bench.json"
    rates = {"SwAV synthetic": 1500.0, "SwAV loader": 1400.0, "SwAV + Un-Mix synthetic": 1000.0,
             "SwAV + Un-Mix loader": 950.0}
    gpu_bench.store_result(str(results), "NVIDIA H100 80GB HBM3", 128, rates, 30.5, 33.0)
    gpu_bench.store_result(str(results), "NVIDIA A100-SXM4-80GB", 128, {"SwAV + Un-Mix loader": 500.0}, 30.0, 32.0)
    stored = json.loads(results.read_text())
    assert set(stored) == {"h100", "a100-80gb"} and stored["h100"]["peak_reserved_gib"] == 33.0
    measured = throughput.read_measured(results, "h100")
    cfg = _recipe()
    rate, source, detail = throughput.per_gpu(cfg, gpus.gpu("h100"), None, measured)
    assert (rate, source) == (pytest.approx(950.0), "measured") and "make gpu-bench" in detail
    cfg.nmb_crops, cfg.size_crops = [2], [224]  # 2x224 only: fewer crop units, more images/s
    assert throughput.per_gpu(cfg, gpus.gpu("h100"), None, measured)[0] > 950.0
    assert throughput.per_gpu(_recipe(), gpus.gpu("l40s"), None, throughput.read_measured(results, "l40s"))[1] == \
        "estimated"


def test_an_unreadable_results_file_is_no_measurement(tmp_path: Path) -> None:
    broken = tmp_path / "gpu_bench.json"
    broken.write_text("{not json")
    assert throughput.read_measured(broken, "h100") is None
    assert throughput.read_measured(tmp_path / "absent.json", "h100") is None


def _recipe():
    import argparse

    return argparse.Namespace(nmb_crops=[2, 6], size_crops=[224, 96], run_swav=False, arch="resnet50", use_fp16=True)
