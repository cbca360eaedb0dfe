"""The launching components' helpers: each step's trainer flags, its JobSpec, the up-front check of every
step (one line per bad step, exit 2, in seconds, nothing started)."""

from __future__ import annotations

import time

import pytest

from components import jobs
from launch.spec import JobSpec


def test_each_step_writes_under_the_run_root_and_user_flags_come_last():
    assert jobs.dump_url("s3://b/run", "eval-semisup", 10) == "s3://b/run/eval-semisup-10pct"
    argv = jobs.pretrain_argv("s3://b/data", "s3://b/run/pretrain", "resnet50", "swav_100ep", "", ["--epochs", 3],
                              knn_monitor=True)
    assert argv == ["--data_path", "s3://b/data", "--dump_path", "s3://b/run/pretrain", "--arch", "resnet50",
                    "--preset", "swav_100ep", "--knn_eval_path", "s3://b/data", "--epochs", "3"]
    assert jobs.evaluation_argv("eval-semisup", "d", "b", "o", "resnet50", ["--lr", 0.1], 1)[-4:] == [
        "--labels_perc", "1", "--lr", "0.1"]
    assert jobs.evaluation_argv("detr", "coco", "random", "o", "resnet50", [])[:4] == [
        "--coco_path", "coco", "--pretrained", "random"]
    assert "--labels_perc" not in jobs.evaluation_argv("eval-knn", "d", "b", "o", "resnet50", [], 0)


def test_the_job_is_named_after_the_step_and_its_output():
    spec = jobs.job_spec("detr", "s3://b/run/detr", ["--epochs", "1"], "local", 2, 0, image="t",
                         node_selector=None, max_restarts=1)
    assert spec.name.startswith("unmix-detr-") and spec.namespace == "local"
    assert spec.world_size == 2 and spec.max_restarts == 1 and spec.node_selector == {}
    with pytest.raises(TypeError, match="unknown job options"):
        jobs.job_spec("detr", "o", [], "local", 1, 0, image="t", eval_gpus=1)


def _spec(command: str, argv: list[str], nodes: int = 1) -> JobSpec:
    return jobs.job_spec(command, f"/tmp/unused/{command}", argv, "local", nodes, 0, image="t")


def test_check_steps_names_every_bad_step_and_exits_2(capfd):
    checks = [("pretraining", _spec("pretrain", ["--data_path", "d", "--dump_path", "o", "--epochz", "1"])),
              ("linear evaluation", _spec("eval-linear", ["--data_path", "d", "--dump_path", "o"])),
              ("semi-supervised 1%", _spec("eval-semisup", ["--data_path", "d", "--dump_path", "o",
                                                            "--labels_perc", "1", "--lr", "-1"]))]
    started = time.monotonic()
    with pytest.raises(SystemExit) as ended:
        jobs.check_steps(checks)
    assert ended.value.code == 2 and time.monotonic() - started < 30
    err = capfd.readouterr().err
    assert "error: pretraining (pretrain): unmix-swav pretrain: unrecognized arguments: --epochz 1" in err
    assert "error: semi-supervised 1% (eval-semisup): --lr -1.0 is out of range" in err
    assert "linear evaluation (" not in err
    assert "bad flags in 2 step(s) (pretraining, semi-supervised 1%); nothing was started" in err


def test_check_steps_passes_good_flags(capfd):
    jobs.check_steps([("linear evaluation", _spec("eval-linear", ["--data_path", "d", "--dump_path", "o"], 2))])
    assert "eval-linear flags checked for 2 node(s) x 1 process(es)" in capfd.readouterr().out
