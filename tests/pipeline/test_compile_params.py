"""`python -m pipeline compile` leaves the repo's copy alone unless asked, and checks `--param` types and choices
with one line each (exit 2) before kfp sees them."""

from __future__ import annotations

import pytest

from pipeline.__main__ import main
from pipeline.compile import COMPILED_PATH, check_parameters
from trainer.errors import UserError


@pytest.mark.parametrize(("param", "says"), [
    ("gpus_per_node=four", 'gpus_per_node="four" is not valid: gpus_per_node takes a whole number'),
    ("knn_monitor=3", "knn_monitor=3 is not valid: knn_monitor takes true or false"),
    ("gpus_per_node=true", "gpus_per_node=true is not valid"),
    ("pretrain_args={}", "pretrain_args={} is not valid: pretrain_args takes a JSON list"),
    ("job_backend=TrainJob", "job_backend=TrainJob is not valid: use one of pytorchjob, trainjob"),
    ("launcher=slurm", "launcher=slurm is not valid: use one of kubernetes, local"),
    ("s3_secret_name=", "s3_secret_name= (empty) leaves the steps' Secret reference empty: for S3 access from "
                        "the pods' service accounts (IRSA, GKE Workload Identity) compile with --s3-credentials "
                        "pod-identity"),
])
def test_a_bad_parameter_is_one_line_and_exit_2(param, says, tmp_path, capsys):
    assert main(["compile", "--output", str(tmp_path / "p.yaml"), "--param", param]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --param ") and says in err[0], err
    assert not (tmp_path / "p.yaml").exists()


def test_numbers_for_string_parameters_are_their_text_and_ints_fit_floats():
    assert check_parameters({"cpu_per_node": 32, "pretrain_timeout_hours": 12, "job_backend": "pytorchjob"}) == {
        "cpu_per_node": "32", "pretrain_timeout_hours": 12.0, "job_backend": "pytorchjob"}
    with pytest.raises(UserError, match="num_nodes=2.5 is not valid"):
        check_parameters({"num_nodes": 2.5})


def test_compile_writes_under_build_and_leaves_the_repos_copy_alone(tmp_path, monkeypatch, capsys):
    before = COMPILED_PATH.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "--image", "registry.example/team/unmix:2.0"]) == 0
    written = tmp_path / "build" / "unmix_swav_pipeline.yaml"
    assert "registry.example/team/unmix:2.0" in written.read_text()
    assert COMPILED_PATH.read_bytes() == before
    assert "--package build/unmix_swav_pipeline.yaml" in capsys.readouterr().out


def test_a_bad_image_pull_secret_name_is_one_line(tmp_path, capsys):
    assert main(["compile", "--output", str(tmp_path / "p.yaml"), "--image-pull-secret", "Reg_Cred"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --image-pull-secret 'Reg_Cred' is not valid"), err
    assert not (tmp_path / "p.yaml").exists()
