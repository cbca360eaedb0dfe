"""launch.torchrun exits with the worker's own exit code, where torchrun exits 1 for any worker failure.

Real torchrun runs (one node, one worker, a few seconds each) of a tiny script that ends as told.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from launch.local import free_port

SCRIPT = """
import os, signal, sys
how = sys.argv[1]
if how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(how))
"""


def _run(launcher: list[str], how: str, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    return subprocess.run([*launcher, "--nnodes=1", "--nproc-per-node=1", "--master_addr=127.0.0.1",
                           f"--master_port={free_port()}", "--max-restarts=0", str(script), how],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_plain_torchrun_turns_every_failure_into_1(tmp_path):
    """Why the wrapper exists: the Training Operator's ExitCode policy would read 1 as permanent."""
    result = _run([sys.executable, "-m", "torch.distributed.run"], "138", tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]


@pytest.mark.parametrize("how, code", [("0", 0), ("2", 2), ("138", 138), ("kill", 137)])
@pytest.mark.slow
def test_the_wrapper_exits_with_the_workers_code(how, code, tmp_path):
    result = _run([sys.executable, "-m", "launch.torchrun"], how, tmp_path)
    assert result.returncode == code, result.stderr[-2000:]
    if code:
        kind = "retryable" if code >= 128 else "permanent"
        assert "[launch.torchrun] rank 0 " in result.stderr and f"exiting {code} ({kind})" in result.stderr
