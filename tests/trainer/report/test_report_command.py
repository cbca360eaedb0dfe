"""`unmix-swav report RUN_ROOT [--dest URL]` on a run's root laid out as the pipeline and k8s/ lay it out (steps
written by hand, tests/report_folders.py): it finds the steps and their twins, writes the same report the
pipeline's report step writes, and refuses a root that holds no step in one line with exit 2."""

from __future__ import annotations

import pytest
from report_folders import full_run, pretraining

from trainer import storage
from trainer.cli import main
from trainer.report.build import find_steps, write_report


def _table(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_the_command_rebuilds_the_report_from_the_run_root(tmp_path, capsys):
    root = tmp_path / "run"
    steps, baselines = full_run(root)
    assert find_steps(str(root)) == (steps, baselines)
    assert main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert "report of 11 step folder(s) (Pretraining, kNN, " in out and out.rstrip().endswith(
        str(root / "report" / "report.html"))
    markdown = (root / "report" / "report.md").read_text()
    assert "| Linear probe | top-1 | 84.4 | 45.0 | +39.4 | 25.0 | ok |" in markdown
    page = (root / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and (root / "report" / "pretraining.png").exists()
    # the report step's own call, with the URLs the steps returned, says the same
    written = write_report(str(root), steps, baselines, dest=str(tmp_path / "step"))
    assert _table(written.markdown) == _table(markdown)


def test_dest_puts_the_report_elsewhere_and_a_step_that_did_not_finish_is_a_warning(tmp_path, capsys):
    root = tmp_path / "run"
    pretraining(root / "pretrain")
    (root / "eval-linear").mkdir()  # started, stopped before its metrics.json
    (root / "eval-linear" / "params.json").write_text('{"data_path": "/data/shapes", "epochs": 100}')
    assert main(["report", str(root), "--dest", str(tmp_path / "elsewhere")]) == 0
    assert "report of 2 step folder(s) (Pretraining, Linear probe)" in capsys.readouterr().out
    assert not (root / "report").exists()
    markdown = (tmp_path / "elsewhere" / "report.md").read_text()
    assert f"- Linear probe: no metrics.json under {root / 'eval-linear'}: the step did not finish" in markdown


def test_a_root_without_steps_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "unrelated").mkdir()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path} holds no step folder (pretrain, eval-knn")
    assert not (tmp_path / "report").exists()


@pytest.mark.slow  # the moto server (a process on loopback)
def test_the_command_reads_and_writes_object_storage(s3_server, tmp_path, capsys):
    full_run(tmp_path / "run")
    root = f"{s3_server.bucket('report-runs')}/runs/r1"
    fs, path = storage.filesystem(root)
    fs.put(str(tmp_path / "run") + "/", path, recursive=True)
    assert main(["report", root]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"{root}/report/report.html")
    markdown = storage.read_text(f"{root}/report/report.md")
    assert "| Linear probe | top-1 | 84.4 | 45.0 | +39.4 | 25.0 | ok |" in markdown
