"""The one error boundary: every class of failure becomes one line and its exit code; bugs get a crash report."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from trainer.errors import EXIT_CRASH, EXIT_PREEMPTED, EXIT_RETRYABLE, EXIT_USER_ERROR, Preempted, UserError
from trainer.run.boundary import classify, one_line, redact, run_guarded
from trainer.storage import StorageUnavailable


def raising(error: BaseException):
    def action() -> None:
        raise error
    return action


CLASSIFIED = [
    (UserError("--epochs -1 must be at least 1"), EXIT_USER_ERROR, "--epochs -1"),
    (StorageUnavailable("reading s3://b/x failed 8 times"), EXIT_RETRYABLE, "failed 8 times"),
    (Preempted("SIGTERM received"), EXIT_PREEMPTED, "SIGTERM"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/file.txt/run"), EXIT_USER_ERROR, "is a file"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp/ckpt"), EXIT_USER_ERROR, "is a folder"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), EXIT_USER_ERROR, "permission denied"),
    (PermissionError(errno.EACCES, "The AWS Access Key Id you provided does not exist", "s3://b/run"),
     EXIT_USER_ERROR, "AWS_ACCESS_KEY_ID"),
    (FileNotFoundError(errno.ENOENT, "The specified bucket does not exist", "s3://nobucket/run"), EXIT_USER_ERROR,
     "bucket does not exist"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/missing"), EXIT_USER_ERROR,
     "does not exist"),
    (FileExistsError(errno.EEXIST, "File exists", "/tmp/x"), EXIT_USER_ERROR, "already exists"),
    (OSError(errno.ENOSPC, "No space left on device", "/tmp/x"), EXIT_USER_ERROR, "no space left"),
    (OSError(errno.EROFS, "Read-only file system", "/ro"), EXIT_USER_ERROR, "read-only"),
    (MemoryError(), EXIT_USER_ERROR, "out of memory"),
    (RuntimeError("DataLoader timed out after 300 seconds"), EXIT_RETRYABLE, "UNMIX_READ_TIMEOUT_S"),
    (RuntimeError("DataLoader worker (pid 123) is killed by signal: Bus error."), EXIT_USER_ERROR, "shm"),
]


@pytest.mark.parametrize(("error", "code", "words"), CLASSIFIED, ids=[type(c[0]).__name__ + str(i)
                                                                       for i, c in enumerate(CLASSIFIED)])
def test_each_class_of_error_is_one_line_and_its_exit_code(error, code, words, capsys):
    assert run_guarded(raising(error)) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert words in err and "Traceback" not in err


def test_a_collective_failure_is_retryable_only_when_several_ranks_run(monkeypatch, capsys):
    error = RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert classify(error) is None
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    assert run_guarded(raising(error)) == EXIT_RETRYABLE
    err = capsys.readouterr().err
    assert err.startswith("error: rank 1: a collective operation failed") and "exiting 138" in err


def test_an_unexpected_error_writes_a_crash_report_under_the_dump_path(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UNMIX_DEBUG", raising=False)
    assert run_guarded(raising(ValueError("shape mismatch 3 vs 4")), str(tmp_path)) == EXIT_CRASH
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "unexpected ValueError: shape mismatch 3 vs 4" in err
    reports = list((tmp_path / "crash-reports").iterdir())
    assert len(reports) == 1 and str(reports[0]) in err
    text = reports[0].read_text()
    assert "Traceback (most recent call last)" in text and "shape mismatch 3 vs 4" in text


def test_without_a_usable_dump_path_the_crash_report_goes_to_a_temp_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert run_guarded(raising(KeyError("x")), lambda: str(blocker / "run")) == EXIT_CRASH
    err = capsys.readouterr().err
    path = Path(err.split("traceback is in ")[1].split(" (UNMIX_DEBUG")[0])
    assert path.exists() and "KeyError" in path.read_text()
    path.unlink()


def test_unmix_debug_prints_the_traceback_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNMIX_DEBUG", "1")
    assert run_guarded(raising(ZeroDivisionError("boom")), str(tmp_path)) == EXIT_CRASH
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_credentials_never_reach_the_line_or_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    assert redact("key AKIAEXAMPLE secret s3cr3t-value-123") == "key *** secret ***"
    assert run_guarded(raising(RuntimeError("signing with s3cr3t-value-123 failed")), str(tmp_path)) == EXIT_CRASH
    err = capsys.readouterr().err
    assert "s3cr3t" not in err
    report = next((tmp_path / "crash-reports").iterdir()).read_text()
    assert "s3cr3t" not in report and "***" in report


def test_argparse_usage_errors_and_ctrl_c_keep_their_codes(capsys):
    assert run_guarded(raising(SystemExit(2))) == 2
    assert run_guarded(raising(KeyboardInterrupt())) == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_dataloader_worker_error_reports_the_original_message():
    worker_error = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most "
                                "recent call last):\n  File \"x.py\", line 1\nRuntimeError: the real reason")
    assert one_line(worker_error) == "RuntimeError: the real reason"


def test_the_cli_puts_every_command_behind_the_boundary(tmp_path, capsys):
    from trainer.cli import main

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = main(["eval-knn", "--data_path", str(tmp_path), "--dump_path", str(blocker / "run"), "--arch",
                 "resnet_tiny", "--image_size", "32"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert os.path.isfile(blocker) and blocker.read_text() == "x"
