"""MLflow tracking against a real MLflow server started on loopback for the test (skipped without mlflow)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from trainer.errors import UserError
from trainer.run import tracking

mlflow = pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root", str(root / "artifacts"),
               "--workers", "1"]
    with open(root / "server.log", "wb") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=20)


@pytest.mark.slow
def test_eval_knn_logs_params_metrics_and_document_and_a_rerun_continues_the_run(
        mlflow_server: str, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from trainer.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-tracking")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    dump = tmp_path / "knn"
    flags = ["eval-knn", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--pretrained", "random",
             "--arch", "resnet_tiny", "--image_size", "32", "--workers", "0", "--k", "5"]
    assert main(flags) == 0
    run_id = (dump / tracking.RUN_ID_FILE).read_text().strip()
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == f"eval-knn {dump}"
    assert run.data.params["k"] == "5" and run.data.params["arch"] == "resnet_tiny"
    assert run.data.params["data_path"] == str(shapes_dir)
    document = json.loads((dump / "metrics.json").read_text())
    assert run.data.metrics["knn/top1"] == pytest.approx(document["top1"])
    assert run.data.metrics["final/top1"] == pytest.approx(document["top1"])
    assert run.data.metrics["result/top5"] == pytest.approx(document["top5"])
    assert run.data.tags["status"] == document["status"]
    assert "metrics.json" in [entry.path for entry in client.list_artifacts(run_id)]
    logged = json.loads(Path(client.download_artifacts(run_id, "metrics.json", str(tmp_path)))
                                      .read_text())
    assert logged["top1"] == document["top1"]

    assert main(flags) == 0  # the finished run is reported again, into the same MLflow run
    assert (dump / tracking.RUN_ID_FILE).read_text().strip() == run_id
    experiment = client.get_experiment_by_name("test-tracking")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.get_metric_history(run_id, "knn/top1")) == 2
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_unreachable_server_warns_once_and_the_run_goes_on(
        shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dump = tmp_path / "knn"
    assert main(["eval-knn", "--data_path", str(shapes_dir), "--dump_path", str(dump), "--pretrained", "random",
                 "--arch", "resnet_tiny", "--image_size", "32", "--workers", "0"]) == 0
    assert (dump / "metrics.json").exists()
    assert capfd.readouterr().err.count("MLflow tracking of") == 1


def test_a_missing_mlflow_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install unmix-swav\[mlflow\]"):
        tracking.check_available()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracking.check_available()  # off: nothing is checked


@pytest.mark.slow
def test_the_report_step_logs_its_pages(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracking.log_report(str(tmp_path), {"report.html": "<html>ok</html>", "report.md": "# ok"})
    run_id = (tmp_path / "report" / tracking.RUN_ID_FILE).read_text().strip()
    client = MlflowClient(mlflow_server)
    assert sorted(entry.path for entry in client.list_artifacts(run_id)) == ["report.html", "report.md"]
    assert client.get_run(run_id).info.status == "FINISHED"
