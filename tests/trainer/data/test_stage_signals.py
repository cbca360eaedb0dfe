"""`stage` owns its pool workers: real signals to a real `unmix-swav stage` process while its pool writes shards.
SIGTERM (to the process, as the kubelet sends it) ends it with 143 and SIGINT (to its process group, as Ctrl-C
does) with 130, one `error:` line each, no traceback; a SIGKILL leaves nothing to report. In every case no
worker survives it by more than a few seconds (checked in /proc), and the same command run again completes a
dataset whose every shard matches the manifest's sha256."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.data.staging import MANIFEST, verify_staged

IMAGES_PER_CLASS = 150  # noise JPEGs: ~2-3 s of decoding for two workers here, the window the signal hits
WORKERS = 2
GONE_WITHIN_S = 15.0  # the stop's grace (5 s) plus scheduling on a loaded machine


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir()
        for index in range(IMAGES_PER_CLASS):
            pixels = rng.integers(0, 255, (384, 384, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.jpg", quality=90)
    return root


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not run)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stage(source: Path, dest: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-m", "trainer", "stage", "--source", str(source), "--dest", str(dest),
                             "--shard_size_mb", "0.5", "--workers", str(WORKERS)],
                            env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _wait_for_workers(process: subprocess.Popen[str], timeout_s: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = _children(process.pid)
        if len(workers) >= WORKERS:
            return workers
        assert process.poll() is None, "stage ended before its pool started"
        time.sleep(0.02)
    raise AssertionError(f"no pool of {WORKERS} workers within {timeout_s:.0f}s")


@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group, code", [
    (signal.SIGTERM, False, 143), (signal.SIGINT, True, 130), (signal.SIGKILL, False, -signal.SIGKILL)])
def test_a_signal_during_staging_leaves_no_worker_and_the_rerun_completes(noise_folder, tmp_path, sig, to_group,
                                                                            code):
    dest = tmp_path / "staged"
    process = _stage(noise_folder, dest)
    workers = _wait_for_workers(process)
    if to_group:
        os.killpg(process.pid, sig)
    else:
        os.kill(process.pid, sig)
    _, err = process.communicate(timeout=60)
    signalled = time.monotonic()
    assert process.returncode == code, err
    assert not (dest / MANIFEST).exists(), "staging finished before the signal: nothing was interrupted"
    while any(map(_alive, workers)) and time.monotonic() - signalled < GONE_WITHIN_S:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], f"workers outlived stage by {GONE_WITHIN_S:.0f}s"
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and ("SIGTERM" in errors[0] or "interrupted" in errors[0]), err

    rerun = _stage(noise_folder, dest)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["splits"]["train"]["count"] == 2 * IMAGES_PER_CLASS
    verify_staged(str(dest), manifest, checksums=True)  # raises on any shard whose bytes differ


def test_workers_0_stages_in_this_process(shapes_dir, tmp_path):
    from trainer.cli import main

    assert main(["stage", "--source", str(shapes_dir), "--dest", str(tmp_path / "d"), "--workers", "0"]) == 0
    manifest = json.loads((tmp_path / "d" / MANIFEST).read_text())
    assert manifest["splits"]["train"]["count"] == 64 and manifest["splits"]["val"]["count"] == 32
    verify_staged(str(tmp_path / "d"), manifest, checksums=True)
