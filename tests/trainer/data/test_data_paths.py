"""Paths read from data files stay inside their dataset root: a staged manifest's shards and index, a wids
index's shardlist, a subset file's names and a COCO annotation's file_name are refused when absolute, holding
`..` or a scheme, with one line naming the file and the entry (exit 2 at the command line, no traceback), and
nothing outside the dataset is ever opened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.trainer.cli.refusal import refused
from trainer import storage
from trainer.data.names import MANIFEST
from trainer.data.readers import StagedSource, read_index
from trainer.data.staging import stage_dataset, verify_staged
from trainer.errors import UserError
from trainer.evaluation.subsets import match_subset

OUTSIDE = ["../outside.tar", "/etc/passwd", "s3://other-bucket/x.tar", "train/../../x.tar", "C:/x.tar",
           "memory::/x.tar", "", "..\\x.tar", None]
INSIDE = ["train/train-000.tar", "a/b..c/d.tar", "x", "./x/y.tar"]


@pytest.mark.parametrize("relative", OUTSIDE)
def test_a_path_leaving_its_root_is_refused_in_one_line_naming_the_entry(relative):
    with pytest.raises(UserError) as refused_error:
        storage.child_url("s3://b/data", relative, "s3://b/data/manifest.json: train shard 3")
    line = str(refused_error.value)
    assert line.startswith("s3://b/data/manifest.json: train shard 3: ") and "\n" not in line


@pytest.mark.parametrize("relative", INSIDE)
def test_a_path_inside_its_root_joins_it(relative):
    assert storage.child_url("s3://b/data", relative, "x") == f"s3://b/data/{relative}"


@pytest.fixture(scope="module")
def staged(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("staged") / "data"
    stage_dataset(str(shapes_dir), str(dest), workers=0, progress=lambda message: None)
    return dest


@pytest.mark.parametrize("bad", ["../outside.tar", "/etc/passwd", "s3://other-bucket/x.tar"])
def test_a_manifest_shard_outside_the_dataset_is_refused_by_the_reader_and_the_verifier(staged, bad):
    manifest = json.loads((staged / MANIFEST).read_text())
    index = read_index(str(staged), manifest["splits"]["train"], manifest)
    manifest["splits"]["train"]["shards"][0]["path"] = bad
    for read in (lambda: verify_staged(str(staged), manifest),
                 lambda: StagedSource(str(staged), manifest, "train", index, None)):
        with pytest.raises(UserError, match=rf"^{staged}/manifest.json: train shard 0: .* not a relative path"):
            read()


def test_a_manifest_index_outside_the_dataset_is_refused(staged):
    manifest = json.loads((staged / MANIFEST).read_text())
    manifest["splits"]["train"]["index"] = "../../index.npz"
    with pytest.raises(UserError, match=rf"^{staged}/manifest.json: index: '../../index.npz'"):
        read_index(str(staged), manifest["splits"]["train"], manifest)


def test_stage_from_a_staged_copy_whose_manifest_leaves_it_exits_2(staged, tmp_path, capsys):
    copy = Path(shutil.copytree(staged, tmp_path / "copy"))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["splits"]["val"]["shards"][0]["path"] = "../../secret.tar"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    refused(capsys, ["stage", "--source", copy, "--dest", tmp_path / "out"], "manifest.json", [tmp_path / "out"])


@pytest.mark.parametrize("entry", ["../other/part-000.tar", "/abs/part-000.tar", "s3://b/part-000.tar"])
def test_a_wids_index_entry_outside_its_folder_exits_2_naming_the_entry(tmp_path, capsys, entry):
    index = tmp_path / "shards" / "wids.json"
    index.parent.mkdir()
    index.write_text(json.dumps({"wids_version": 1, "shardlist": [{"url": "part-000.tar", "nsamples": 1},
                                                                  {"url": entry, "nsamples": 1}]}))
    line = refused(capsys, ["stage", "--source", index, "--dest", tmp_path / "out"], str(index), [tmp_path / "out"])
    assert "shardlist entry 1" in line


@pytest.mark.parametrize("name", ["../cats/a.jpg", "/cats/a.jpg", "s3://b/cats/a.jpg"])
def test_a_subset_name_outside_the_data_is_refused(name):
    class Named:
        names = ["cats/a.jpg", "dogs/b.jpg"]

        def __len__(self) -> int:
            return len(self.names)

        def name(self, index: int) -> str:
            return self.names[index]

    with pytest.raises(UserError, match=r"^--subset_file s\.txt: name 2: .* not a relative path"):
        match_subset(Named(), ["dogs/b.jpg", name], "s.txt")


@pytest.mark.parametrize("file_name", ["../../secret.jpg", "/etc/hostname", "s3://b/x.jpg"])
def test_a_coco_file_name_outside_the_image_folder_exits_2_naming_the_image(tmp_path, capsys, file_name):
    from trainer.detr.synthetic_coco import make_shapes_coco

    coco = tmp_path / "coco"
    make_shapes_coco(str(coco), train_images=2, val_images=1, image_size=32)
    path = coco / "annotations" / "instances_train2017.json"
    document = json.loads(path.read_text())
    document["images"][1]["file_name"] = file_name
    path.write_text(json.dumps(document))
    image_id = document["images"][1]["id"]
    line = refused(capsys, ["detr", "--coco_path", coco, "--dump_path", tmp_path / "out", "--pretrained", "random",
                            "--device", "cpu"], f"image {image_id} file_name", [tmp_path / "out"])
    assert "instances_train2017.json" in line
