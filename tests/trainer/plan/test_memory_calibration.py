"""The memory model against measured CPU peaks: the peak RSS growth of real pretraining steps (a fresh process per
measurement, tests/trainer/plan/cpu_peak.py) is HOST_RSS_FACTOR x the simulated tensor bytes within HOST_RSS_ERROR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.plan import memory

sys.path.insert(0, str(Path(__file__).parent))

SCRIPT = Path(__file__).with_name("cpu_peak.py")
ROOT = Path(__file__).resolve().parents[3]


def fresh_process_bytes(arch: str, batch: int, sizes: list[int], *flags: str) -> int:
    """cpu_peak.py's figure from a fresh process with a clean environment: neither this process's state nor the
    variables earlier tests left (a full suite once measured 0.43-0.58 of the usual ratio) may change it."""
    clean = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    done = subprocess.run([sys.executable, str(SCRIPT), arch, str(batch), *map(str, sizes), *flags],
                          capture_output=True, text=True, timeout=300,
                          env={**clean, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)["bytes"]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "batch", "sizes"), [("resnet18", 32, [64, 32]), ("resnet18", 8, [64, 32]),
                                                      ("resnet18", 16, [96])])
def test_cpu_peak_rss_is_the_simulated_bytes_times_the_host_factor(arch: str, batch: int, sizes: list[int]) -> None:
    simulated = fresh_process_bytes(arch, batch, sizes, "--meta")  # the model: the step on the meta device
    measured = fresh_process_bytes(arch, batch, sizes)  # the peak RSS growth of the real step on the CPU
    error = memory.HOST_RSS_FACTOR * simulated / measured - 1
    print(f"{arch} batch {batch} at {sizes}: simulated {simulated / 2**20:.0f} MiB, measured RSS growth "
          f"{measured / 2**20:.0f} MiB, ratio {measured / simulated:.2f}, model error {error:+.1%}")
    assert abs(error) <= memory.HOST_RSS_ERROR
