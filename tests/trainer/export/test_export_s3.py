"""unmix-swav export from and to object storage (moto's S3 server on loopback)."""

from __future__ import annotations

import hashlib
import json

import pytest

from trainer import storage
from trainer.cli import main


@pytest.mark.slow
def test_export_reads_and_writes_s3(run_dir, s3_server, tmp_path):
    run = storage.join(s3_server.bucket("export-tests"), "runs", "r1")
    fs, path = storage.filesystem(run)
    for folder in ("pretrain", "eval-linear", "eval-linear-random"):
        fs.put(str(run_dir / folder) + "/", f"{path}/{folder}/", recursive=True)
    dest = storage.join(run, "export")
    assert main(["export", "--pretrained", storage.join(run, "pretrain", "checkpoint.pth.tar"), "--arch",
                 "resnet_tiny", "--linear", storage.join(run, "eval-linear"), "--dest", dest]) == 0
    config = json.loads(storage.read_text(storage.join(dest, "config.json")))
    for name, record in config["files"].items():
        assert hashlib.sha256(storage.read_bytes(storage.join(dest, name))).hexdigest() == record["sha256"]
    card = storage.read_text(storage.join(dest, "MODEL_CARD.md"))
    random = json.loads((run_dir / "eval-linear-random" / "metrics.json").read_text())["top1"]
    assert f"| {random:.2f} | ok |" in card  # the random-init twin was found beside the pretraining folder on S3
