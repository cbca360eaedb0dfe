"""The NCCL error path: the trainer asks for CleanUpOnly error handling (so a dead or stalled peer surfaces as
DistBackendError in the training thread, not as the watchdog's SIGABRT) and the boundary maps it to 138."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from trainer import distributed
from trainer.errors import EXIT_RETRYABLE
from trainer.run.boundary import classify

WATCHDOG_TIMEOUT = ("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=812, OpType=ALLREDUCE, "
                    "NumelIn=2048, NumelOut=2048, Timeout(ms)=1800000) ran for 1800043 milliseconds before timing out.")
ABORTED = ("NCCL communicator was aborted on rank 3. Original reason for failure was: NCCL Error 6: remote "
           "process exited")
RANK_3_OF_16 = {"WORLD_SIZE": "16", "RANK": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture
def cuda_launch(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """init_distributed as on a GPU node, with the process group creation recorded instead of made."""
    seen: dict[str, object] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)

    def record(**kwargs: object) -> None:
        seen.update(kwargs, handling=distributed.os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING"),
                    blocking=distributed.os.environ.get("TORCH_NCCL_BLOCKING_WAIT"))

    monkeypatch.setattr(dist, "init_process_group", record)
    for name, value in {**RANK_3_OF_16, "LOCAL_RANK": "3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    return seen


def test_nccl_group_gets_clean_up_only_error_handling(cuda_launch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    env = distributed.init_distributed("auto")
    assert env.device == torch.device("cuda", 3) and cuda_launch["backend"] == "nccl"
    assert cuda_launch["handling"] == "2" and cuda_launch["blocking"] is None  # no host-blocking waits


def test_an_explicit_setting_is_kept(cuda_launch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    distributed.init_distributed("auto")
    assert cuda_launch["handling"] == "1"


@pytest.mark.parametrize("message", [WATCHDOG_TIMEOUT, ABORTED])
def test_what_the_training_thread_raises_under_nccl_exits_138(message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in RANK_3_OF_16.items():
        monkeypatch.setenv(name, value)
    code, line = classify(dist.DistBackendError(message))
    assert code == EXIT_RETRYABLE and "another rank died or stalled" in line
