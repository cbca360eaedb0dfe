"""Pretraining survives what pods go through: SIGTERM, SIGKILL, torn checkpoints, dead or stalled ranks,
and a restart with another number of processes. Every case runs the real CLI as subprocesses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainer import storage
from trainer.run.metrics import read_records

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY = ["--preset", "demo_cpu", "--nmb_crops", "2", "2", "--size_crops", "32", "16", "--min_scale_crops", "0.3",
        "0.1", "--max_scale_crops", "1", "0.3", "--batch_size", "8", "--epochs", "2",
        "--nmb_prototypes", "20", "--freeze_prototypes_niters", "3", "--log_freq", "1"]
MAX_STEPS = 10  # 64 images / batch 8: 8 steps per epoch, so the runs below cross an epoch boundary
QUEUE = ["--queue_length", "16", "--epoch_queue_starts", "0"]  # full after 2 steps, then used: part of the state


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pretrain_argv(data: Path, dump: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data_path", str(data), "--dump_path", str(dump), *TINY, *extra]


def start(argv: list[str], log: Path, launcher: list[str] | None = None, **env: str) -> subprocess.Popen:
    command = (launcher or [sys.executable, "-m", "trainer"]) + argv
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the run exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f}s"
        time.sleep(0.05)


def logged_steps(dump: Path) -> list[int]:
    return [record["step"] for record in read_records(str(dump), "train_step")]


def checkpoint_step(dump: Path) -> int:
    """The step of the checkpoint on disk (-1 if none yet); writes are atomic, so it is always whole."""
    path = dump / "checkpoint.pth.tar"
    return torch.load(path, weights_only=True)["step"] if path.exists() else -1


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), f"{key} differs"


class Background:
    """A run started now and waited for when its result is needed, so that it overlaps other runs."""

    def __init__(self, argv: list[str], dump: Path, log: Path):
        self.dump, self.log, self.process = dump, log, start(argv, log)

    def finished(self) -> Path:
        assert self.process.wait(timeout=300) == 0, self.log.read_text()[-3000:]
        return self.dump


@pytest.fixture(scope="module")
def uninterrupted(shapes_dir, tmp_path_factory) -> Background:
    dump = tmp_path_factory.mktemp("uninterrupted")
    return Background(pretrain_argv(shapes_dir / "train", dump, *QUEUE, "--max_steps", str(MAX_STEPS), "--workers",
                                    "0"), dump, dump.parent / f"{dump.name}.log")


def optimizer_tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the optimizer state (momentum buffers for SGD, moments and step for AdamW)."""
    return {f"{index}.{name}": value for index, state in checkpoint["optimizer"]["state"].items()
            for name, value in state.items() if isinstance(value, torch.Tensor)}


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_equals_an_uninterrupted_run(shapes_dir, tmp_path, uninterrupted):
    dump = tmp_path / "dump"
    argv = pretrain_argv(shapes_dir / "train", dump, *QUEUE, "--max_steps", str(MAX_STEPS), "--checkpoint_every_steps",
                         "2")
    argv_workers = [*argv, "--workers", "1"]

    # Eviction: SIGTERM to the main process; it finishes the step, checkpoints and exits 143.
    preempted = start(argv_workers, tmp_path / "preempted.log")
    wait_for(lambda: len(logged_steps(dump)) >= 3, preempted, "step 3")
    preempted.send_signal(signal.SIGTERM)
    assert preempted.wait(timeout=60) == 143
    preempted_log = (tmp_path / "preempted.log").read_text()
    assert "SIGTERM received: checkpoint written at step" in preempted_log
    term_step = checkpoint_step(dump)
    assert 3 <= term_step < MAX_STEPS and logged_steps(dump)[-1] == term_step

    # Node loss: SIGKILL to the whole process group (trainer and loader worker) after a later checkpoint.
    killed = start(argv_workers, tmp_path / "killed.log")
    wait_for(lambda: checkpoint_step(dump) >= term_step + 2, killed, f"a checkpoint after step {term_step + 2}")
    os.killpg(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    kill_step = checkpoint_step(dump)
    assert kill_step < MAX_STEPS, "the run finished before it could be killed"
    assert f"at step {term_step} " in (tmp_path / "killed.log").read_text()

    # The same command again (with --workers 0: augmentation does not depend on the loader's workers).
    resumed = start([*argv, "--workers", "0"], tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert f"resumed from {dump}/checkpoint.pth.tar at step {kill_step} " in (tmp_path / "resumed.log").read_text()

    reference = uninterrupted.finished()
    final = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    expected = torch.load(reference / "checkpoint.pth.tar", weights_only=True)
    assert final["step"] == expected["step"] == MAX_STEPS
    assert_same_tensors(final["model"], expected["model"])
    assert_same_tensors(torch.load(dump / "backbone.pth", weights_only=True),
                        torch.load(reference / "backbone.pth", weights_only=True))
    assert_same_tensors(optimizer_tensors(final), optimizer_tensors(expected))  # AdamW moments and step count
    # Steps logged after the last checkpoint by the killed process were dropped and logged again, once.
    lines = read_records(str(dump), "train_step")
    expected_lines = read_records(str(reference), "train_step")
    assert [line["step"] for line in lines] == list(range(1, MAX_STEPS + 1))
    assert [line["loss"] for line in lines] == [line["loss"] for line in expected_lines]
    assert final["queues"][0]["filled"] == 16
    assert torch.equal(final["queues"][0]["embeddings"], expected["queues"][0]["embeddings"])


@pytest.mark.slow
def test_truncated_checkpoint_is_one_clear_error(shapes_dir, tmp_path, uninterrupted):
    dump = tmp_path / "dump"
    dump.mkdir()
    whole = (uninterrupted.finished() / "checkpoint.pth.tar").read_bytes()
    (dump / "checkpoint.pth.tar").write_bytes(whole[:len(whole) // 2])
    done = subprocess.run([sys.executable, "-m", "trainer", *pretrain_argv(shapes_dir / "train", dump,
                                                                            "--workers", "0")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and errors[0].startswith(f"error: no intact checkpoint to resume: checkpoint {dump}"
                                                         "/checkpoint.pth.tar could not be loaded"), done.stderr
    assert "Traceback" not in done.stderr
    assert (dump / "checkpoint.pth.tar").read_bytes() == whole[:len(whole) // 2]  # left for inspection


@pytest.mark.slow
def test_resuming_with_another_world_size_keeps_the_epoch_and_resplits_the_queue(shapes_dir, tmp_path,
                                                                                 uninterrupted):
    dump = tmp_path / "dump"
    dump.mkdir()
    for name in ("checkpoint.pth.tar", "metrics.jsonl"):  # 1 process, step 10 = epoch 1, iteration 2 of 8
        (dump / name).write_bytes((uninterrupted.finished() / name).read_bytes())

    torchrun = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                "-m", "trainer"]
    double = start(pretrain_argv(shapes_dir / "train", dump, *QUEUE, "--workers", "0", "--max_steps", "7"),
                   tmp_path / "two.log", launcher=torchrun)
    assert double.wait(timeout=300) == 0, (tmp_path / "two.log").read_text()[-3000:]
    log = (tmp_path / "two.log").read_text()
    assert ("the checkpoint was written by 1 processes with 8 steps per epoch, this run has 2 with 4: epoch 1 "
            "continues at iteration 1; the queue was re-split across the new ranks") in log
    final = torch.load(dump / "checkpoint.pth.tar", weights_only=True)
    assert final["world_size"] == 2 and final["step"] == 7 and (final["epoch"], final["iteration"]) == (1, 3)
    assert [q["filled"] for q in final["queues"]] == [8, 8]
    assert logged_steps(dump) == [1, 2, 3, 4, 5, 6, 7]  # steps 6-10 of the 1-process numbering were dropped


def worker_pids(torchrun_pid: int) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started, read from /proc."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(v.split(b"=")[1]) for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = pid
    return ranks


@pytest.mark.slow
def test_a_killed_rank_ends_the_whole_torchrun_job(shapes_dir, tmp_path):
    dump = tmp_path / "dump"
    torchrun = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                "-m", "trainer"]
    job = start(pretrain_argv(shapes_dir / "train", dump, "--workers", "0"), tmp_path / "job.log",
                launcher=torchrun, UNMIX_COLLECTIVE_TIMEOUT_MIN="0.2")
    try:
        wait_for(lambda: len(logged_steps(dump)) >= 2, job, "step 2")
        os.kill(worker_pids(job.pid)[1], signal.SIGKILL)
        killed_at = time.monotonic()
        code = job.wait(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    log = (tmp_path / "job.log").read_text()
    assert code != 0 and time.monotonic() - killed_at < 60, log[-3000:]
    assert "Signal 9 (SIGKILL) received by PID" in log


@pytest.mark.slow
def test_a_stalled_rank_times_out_the_others_with_one_line(shapes_dir, tmp_path):
    """One process per pod (no torchrun): a peer that hangs is caught by the collective timeout."""
    dump = tmp_path / "dump"
    port = str(free_port())
    ranks = [start(pretrain_argv(shapes_dir / "train", dump, "--workers", "0"), tmp_path / f"rank{rank}.log",
                   RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   UNMIX_COLLECTIVE_TIMEOUT_MIN="0.1")
             for rank in (0, 1)]
    try:
        wait_for(lambda: len(logged_steps(dump)) >= 2, ranks[0], "step 2")
        ranks[1].send_signal(signal.SIGSTOP)
        stalled_at = time.monotonic()
        code = ranks[0].wait(timeout=90)
        waited = time.monotonic() - stalled_at
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = (tmp_path / "rank0.log").read_text()
    assert code == 138 and waited < 45, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: a collective operation failed (") and re.search("time.? ?out", last, re.I)
    assert "another rank died or stalled" in last and "Traceback" not in log


class UnreachableImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        raise storage.StorageUnavailable(f"reading s3://b/img{index}.jpg failed 8 times over 90s (boom)")


@pytest.mark.slow
def test_a_store_outage_inside_a_loader_worker_keeps_its_type_and_one_line_message():
    from trainer.run.boundary import one_line

    loader = torch.utils.data.DataLoader(UnreachableImages(), num_workers=1)
    with pytest.raises(storage.StorageUnavailable) as raised:  # what run() catches to exit 138
        next(iter(loader))
    # The worker's re-raise prefixes the type; one_line drops it for the product's own errors (the exit code says it)
    assert one_line(raised.value) == "reading s3://b/img0.jpg failed 8 times over 90s (boom)"
