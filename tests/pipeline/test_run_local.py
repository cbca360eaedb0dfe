"""End to end at tiny size: the SAME pipeline function on kfp's local SubprocessRunner, every step for real
(stage, the flag check, pretraining with the kNN monitor and the four evaluations as 2-replica jobs under
torchrun with the operator's env, the report), storage a local folder. Then a second run on the same
storage with a bad flag in every step's args: it reuses the staged data and fails at the check step in
seconds, before any torchrun. About 3 minutes on 2 CPU cores."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from pipeline.local_run import SIZES, run_local

TWO_NODE_EVALUATIONS = {"linear_num_nodes": 2, "semisup_num_nodes": 2, "detr_num_nodes": 2}
BAD_FLAGS = {"pretrain_args": ["--epochz", "1"], "linear_args": ["--lr", "-1"],
             "semisup_args": ["--decay_epochs", "80", "60"], "detr_args": ["--lr_drop", "0"]}


def _seconds(pattern: str, log: str) -> float:
    found = re.search(pattern + r".* in ([0-9.]+)s", log)
    assert found, f"no line matching {pattern!r} in the log"
    return float(found.group(1))


V1 = {"job_backend": "pytorchjob"}  # the Training Operator v1 path, kept; the default is TrainJobs (below)


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_a_second_run_reuses_the_data_and_fails_fast(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    where = run_local("tiny", tmp_path / "out", params={**TWO_NODE_EVALUATIONS, **V1})
    first = capfd.readouterr()
    first_log = first.out + first.err

    report_url = Path(where["report_url"])
    assert report_url.is_file() and report_url.is_relative_to(tmp_path / "out" / "storage")
    page = Path(where["report_html"]).read_text()
    assert page == report_url.read_text()
    assert "id='summary'" in page and page.count("class='result'") >= 6  # every headline, beside its twin
    run_root = report_url.parent.parent
    assert (run_root / "pretrain" / "backbone.pth").is_file()
    knn = [json.loads(line) for line in (run_root / "pretrain" / "metrics.jsonl").read_text().splitlines()
           if '"knn"' in line]
    assert knn and 0.0 <= knn[-1]["top1"] <= 100.0  # the kNN monitor ran inside the pretraining job
    for step in ("eval-knn", "eval-linear", "eval-semisup-1pct", "eval-semisup-10pct"):
        for folder in (step, f"{step}-random"):  # the pretrained trunk and its random-init twin
            metrics = json.loads((run_root / folder / "metrics.json").read_text())
            assert 0.0 <= metrics["top1"] <= 100.0 and metrics["top1"] <= metrics["top5"]
        assert metrics["pretrained"]["random_init"] is True
    assert json.loads((run_root / "detr" / "metrics.json").read_text())["world_size"] == 2
    # The export step ran after the evaluations (the classifier of eval-linear) and the report links it.
    export = json.loads((run_root / "export" / "config.json").read_text())
    assert export["num_classes"] == 4 and set(export["files"]) == {"trunk.safetensors", "classifier.safetensors"}
    assert "id='export'" in page and export["files"]["classifier.safetensors"]["sha256"] in page
    # Each evaluation and its twin ran as one group of two replicas (Master + Worker), checked before it started.
    assert first_log.count("rank 0/2 initialised") == 10 and first_log.count("rank 1/2 initialised") == 0
    assert first_log.count("flags checked for 2 node(s) x 1 process(es)") >= 8  # the check step + each launch
    first_staging_s = _seconds(r"\[stage\] staged builtin:textures", first_log)

    bad = {key: SIZES["tiny"][key] + flags for key, flags in BAD_FLAGS.items()}
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="check-args"):
        run_local("tiny", tmp_path / "out", params={**TWO_NODE_EVALUATIONS, **V1, **bad})
    failed_after_s = time.monotonic() - started
    second = capfd.readouterr()
    second_log = second.out + second.err
    reuse_s = _seconds(r"\[stage\] reusing .*staged/images-builtin-textures", second_log)
    print(f"first staging {first_staging_s:.1f}s, reuse {reuse_s:.1f}s, bad flags failed the run in "
          f"{failed_after_s:.0f}s")
    assert failed_after_s < 60
    assert len(list((tmp_path / "out" / "storage" / "staged").glob("images-*"))) == 1  # one staged copy
    for line in ("pretraining (pretrain): unmix-swav pretrain: unrecognized arguments: --epochz 1",
                 "linear evaluation (eval-linear): --lr -1.0 is out of range",
                 "semi-supervised 1% (eval-semisup): --decay_epochs 80 60 must be positive epochs in increasing",
                 "DETR transfer (detr): --lr_drop 0 is out of range"):
        assert line in second_log
    assert "[master-0]" not in second_log and "launch.torchrun" not in second_log  # no job was started


@pytest.mark.slow
def test_tiny_pipeline_runs_every_distributed_step_as_a_trainjob(tmp_path, monkeypatch, capfd):
    """job_backend=trainjob: the same pipeline, every distributed step a TrainJob whose nodes run here with the
    env Kubeflow Trainer v2's torch plugin injects (PET_*) and JobSet's restart rules. About 3 minutes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    where = run_local("tiny", tmp_path / "out", params={**TWO_NODE_EVALUATIONS, "job_backend": "trainjob"})
    captured = capfd.readouterr()
    log = captured.out + captured.err
    report_url = Path(where["report_url"])
    assert report_url.is_file() and "id='summary'" in report_url.read_text()
    run_root = report_url.parent.parent
    for step in ("eval-knn", "eval-linear", "eval-semisup-1pct", "eval-semisup-10pct"):
        for folder in (step, f"{step}-random"):
            assert 0.0 <= json.loads((run_root / folder / "metrics.json").read_text())["top1"] <= 100.0
    assert json.loads((run_root / "detr" / "metrics.json").read_text())["world_size"] == 2
    assert log.count("rank 0/2 initialised") == 10  # every evaluation and its twin: one group of two nodes
    assert "[node-0-0]" in log and "[master-0]" not in log  # TrainJob nodes, no PyTorchJob replicas
