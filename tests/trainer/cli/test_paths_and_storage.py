"""Every command against the usual path and object-store mistakes: one line, the right exit code, nothing lost.

S3 is moto's real server on loopback over HTTP: the session's `s3_server` (no auth), and for bad
credentials a second one started here with moto's IAM checks on (INITIAL_NO_AUTH_ACTION_COUNT=0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from refusal import refused, snapshot
from servers import free_port, wait_until_serving

from trainer.cli import main
from trainer.detr.synthetic_coco import make_shapes_coco
from trainer.errors import EXIT_RETRYABLE

TINY_PRETRAIN = ["--preset", "demo_cpu", "--arch", "resnet_tiny", "--epochs", "1", "--batch_size", "8",
                 "--workers", "0", "--size_crops", "32", "--max_steps", "1"]
TINY_EVAL = ["--arch", "resnet_tiny", "--image_size", "32", "--batch_size", "8", "--workers", "0", "--epochs", "1"]
TINY_DETR = ["--arch", "resnet_tiny", "--hidden_dim", "32", "--enc_layers", "1", "--dec_layers", "1",
             "--dim_feedforward", "64", "--nheads", "4", "--num_queries", "10", "--image_size", "64",
             "--batch_size", "2", "--workers", "0", "--device", "cpu", "--epochs", "1", "--pretrained", "none"]


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_shapes_coco(str(root), train_images=4, val_images=2, image_size=32, seed=0)
    return root


def commands(shapes: Path, coco: Path) -> dict[str, Callable[[str], list[str]]]:
    """Command name -> argv for an output location (the one flag these tests vary)."""
    return {
        "pretrain": lambda out: ["pretrain", "--data_path", str(shapes), "--dump_path", out, *TINY_PRETRAIN],
        "eval-linear": lambda out: ["eval-linear", "--data_path", str(shapes), "--dump_path", out, *TINY_EVAL],
        "eval-semisup": lambda out: ["eval-semisup", "--data_path", str(shapes), "--dump_path", out, *TINY_EVAL],
        "eval-knn": lambda out: ["eval-knn", "--data_path", str(shapes), "--dump_path", out, *TINY_EVAL[:8]],
        "detr": lambda out: ["detr", "--coco_path", str(coco), "--dump_path", out, *TINY_DETR],
        "stage": lambda out: ["stage", "--source", str(shapes), "--dest", out, "--workers", "1"],
    }


COMMANDS = ["pretrain", "eval-linear", "eval-semisup", "eval-knn", "detr", "stage"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_path_that_is_a_file(command, shapes_dir, coco_dir, tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    line = refused(capsys, commands(shapes_dir, coco_dir)[command](str(blocker)), "results.txt", [tmp_path])
    assert "already exists" in line or "is a file" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_path_under_a_file(command, shapes_dir, coco_dir, tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    line = refused(capsys, commands(shapes_dir, coco_dir)[command](str(blocker / "run")), "results.txt",
                   [tmp_path])
    assert "is a file, not a folder" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_bucket_that_does_not_exist(command, shapes_dir, coco_dir, s3_server, capsys):
    line = refused(capsys, commands(shapes_dir, coco_dir)[command]("s3://no-such-bucket-here/run"),
                   "no-such-bucket-here", [])
    assert "bucket does not exist" in line and "create it" in line


@pytest.fixture(scope="module")
def s3_with_auth() -> Iterator[str]:
    """A moto server that checks credentials, on its own loopback port."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               endpoint.rsplit(":", 1)[1]], env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(endpoint, server)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.slow
def test_a_wrong_access_key_is_one_line_and_never_echoed(command, shapes_dir, coco_dir, s3_with_auth,
                                                        monkeypatch, capsys):
    secret = "wrong-secret-8f3a"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_with_auth)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    line = refused(capsys, commands(shapes_dir, coco_dir)[command]("s3://some-bucket/run"), "AWS_ACCESS_KEY_ID",
                   [])
    assert "access denied" in line and secret not in line and "AKIANOTAKEY0000" not in line


def test_an_unreachable_endpoint_is_retryable_with_one_line(shapes_dir, coco_dir, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # credentials present: the endpoint is the fault
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("UNMIX_STORAGE_RETRIES", "2")
    monkeypatch.setenv("UNMIX_STORAGE_RETRY_DELAY", "0.01")
    assert main(commands(shapes_dir, coco_dir)["eval-knn"]("s3://b/run")) == EXIT_RETRYABLE
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "AWS_ENDPOINT_URL" in errors[0] and "exiting 138" in errors[0]


@pytest.mark.parametrize("command", ["eval-linear", "eval-semisup", "eval-knn"])
def test_pretrained_weights_that_are_a_folder(command, shapes_dir, coco_dir, tmp_path, capsys):
    weights = tmp_path / "backbone.pth"
    weights.mkdir()
    dump = tmp_path / "run"
    argv = [*commands(shapes_dir, coco_dir)[command](str(dump)), "--pretrained", str(weights)]
    assert "is a folder" in refused(capsys, argv, "--pretrained", [dump])


def test_pipeline_compile_to_a_folder_and_submit_to_no_server(tmp_path, capsys):
    from pipeline.__main__ import main as pipeline_main
    from pipeline.compile import COMPILED_PATH

    before = snapshot(tmp_path)
    assert pipeline_main(["compile", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert "is a folder" in err and "Traceback" not in err and snapshot(tmp_path) == before
    assert pipeline_main(["submit", "--package", str(COMPILED_PATH), "--host", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "could not reach Kubeflow Pipelines" in err and "Traceback" not in err
