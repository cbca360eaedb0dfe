"""trainer/plan/memory.py: the live-bytes counter, the meta simulation against the same step's real CPU tensors,
mixed precision against CPU autocast, and the plan's verdicts (monotone in the batch, the largest batch that fits)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from trainer.plan import memory

sys.path.insert(0, str(Path(__file__).parent))
from cpu_peak import pretrain_cfg  # noqa: E402

CPU = torch.device("cpu")


def test_live_bytes_counts_a_storage_once_and_frees_it_with_its_last_view() -> None:
    with memory.LiveBytes("meta") as counter:
        base = torch.empty(1000, device="meta")
        view = base.view(10, 100)
        assert counter.live == 4000
        del base
        assert counter.live == 4000  # the view keeps the storage
        del view
        assert counter.live == 0
        torch.zeros(10, device="meta") + 1  # noqa: B018 - a temporary: counted at its peak, then freed
    assert counter.peak == 4000 and counter.live == 0


@pytest.mark.parametrize(("arch", "sizes", "batch"), [("resnet_tiny", [32, 16], 6), ("resnet18", [64, 32], 4)])
def test_the_meta_simulation_equals_the_real_cpu_steps_tensors(arch: str, sizes: list[int], batch: int) -> None:
    cfg = pretrain_cfg(arch, sizes)
    meta = memory.measure_steps(cfg, (batch,), 1, torch.device("meta"))
    real = memory.measure_steps(cfg, (batch,), 1, CPU)
    assert meta[0] == real[0]  # parameters
    assert max(meta[3]) == pytest.approx(max(real[3]), rel=0.01)
    assert meta[2] == pytest.approx(real[2], rel=0.01)


def test_mixed_precision_activations_match_cpu_autocast_within_the_models_error() -> None:
    cfg = pretrain_cfg("resnet18", [64, 32])
    parameters, _, between, (_, fp32) = memory.measure_steps(cfg, (8,), 1, CPU)
    _, _, _, (_, bf16) = memory.measure_steps(cfg, (8,), 1, CPU, torch.bfloat16)
    activations_fp32 = fp32 - between
    activations_bf16 = bf16 - between - 2 * parameters  # autocast's bf16 weight copies
    measured = activations_bf16 / activations_fp32
    print(f"measured bf16 / fp32 activation bytes: {measured:.3f} (model {memory.AMP_ACTIVATION_FACTOR})")
    assert measured == pytest.approx(memory.AMP_ACTIVATION_FACTOR, rel=memory.MODEL_ERROR)


def test_memory_grows_with_the_batch_and_the_largest_batch_is_the_last_that_fits() -> None:
    step = memory.simulate(pretrain_cfg("resnet_tiny", [32, 16]), world_size=8, batch=64)
    totals = [memory.plan_memory(step, batch, True, 8, 80.0).gib_per_gpu for batch in (2, 8, 32, 128, 512)]
    assert all(b > a for a, b in zip(totals, totals[1:], strict=False))
    gpu_gib = memory.plan_memory(step, 100, True, 8, 80.0).gib_per_gpu  # a GPU exactly as big as batch 100 needs
    plan = memory.plan_memory(step, 4, True, 8, gpu_gib)
    assert plan.fits and plan.largest_batch == 100
    assert not memory.plan_memory(step, 101, True, 8, gpu_gib).fits


def test_the_simulated_line_through_b_and_2b_predicts_3b() -> None:
    cfg = pretrain_cfg("resnet_tiny", [32, 16])
    step = memory.simulate(cfg, world_size=1, batch=16)
    _, _, _, peaks = memory.measure_steps(cfg, (48,), 1, torch.device("meta"))
    assert step.peak(48) == pytest.approx(peaks[-1], rel=0.01)
