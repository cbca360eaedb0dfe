"""The pipeline's export step (components/export.py) on a real tiny run folder (tests/trainer/export/conftest.py:
pretraining + eval-linear laid out as the pipeline lays out a run), and the report's Export section, which finds
the export in storage: what `unmix-swav report RUN_ROOT` shows for a kubectl-applied run too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.exporting import export_run
from trainer.report.build import write_report


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run (each test writes its own export), without the extra -bn dump."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval-linear-bn"))
    return copy


def test_the_step_exports_the_classifier_and_the_report_links_every_file_with_its_digest(run, capfd):
    url = export_run(str(run), str(run / "pretrain" / "backbone.pth"), "resnet_tiny",
                     str(run / "eval-linear" / "metrics.json"))  # what the eval-linear task returns
    assert url == str(run / "export")
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["num_classes"] == 4 and set(config["files"]) == {"trunk.safetensors", "classifier.safetensors"}
    assert "eval-linear" in (run / "export" / "MODEL_CARD.md").read_text()  # the card read the evaluations itself

    written = write_report(str(run))  # no URLs given: the report finds the steps and the export in storage
    page = written.html
    assert "id='export'" in page and "classifier for 4 classes" in page
    for name in ("MODEL_CARD.md", "config.json", "trunk.safetensors", "classifier.safetensors"):
        assert f"href='{run / 'export' / name}'" in page
    for record in config["files"].values():
        assert record["sha256"] in page and record["sha256"] in written.markdown
    assert "## Export" in written.markdown and "error:" not in capfd.readouterr().err


def test_a_head_that_cannot_be_shipped_leaves_the_trunk_exported_with_a_warning(run, capfd):
    """The random-init twin's dump stands in for an unusable eval-linear result (export refuses a random trunk's
    head): the step still exports the trunk, says why in one line, and the report shows a trunk-only export."""
    url = export_run(str(run), str(run / "pretrain" / "backbone.pth"), "resnet_tiny", str(run / "eval-linear-random"))
    assert url == str(run / "export")
    err = capfd.readouterr().err
    assert err.count("warning: export: the linear evaluation's head is not exported (") == 1
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["num_classes"] is None and set(config["files"]) == {"trunk.safetensors"}
    assert "the trunk alone" in write_report(str(run)).html


def test_a_failed_export_costs_no_report_and_the_report_says_how_to_make_one(run, capfd):
    (run / "pretrain" / "backbone.pth").unlink()
    assert export_run(str(run), str(run / "pretrain" / "backbone.pth"), "resnet_tiny",
                      str(run / "eval-linear")) == ""
    err = capfd.readouterr().err
    assert "error: --pretrained" in err and "nothing was exported to" in err
    assert not (run / "export").exists()
    written = write_report(str(run))
    assert "the run has no export. Make one with" in written.markdown
    assert (f"unmix-swav export --pretrained {run}/pretrain/backbone.pth --arch resnet_tiny --linear "
            f"{run}/eval-linear --dest {run}/export") in written.markdown
