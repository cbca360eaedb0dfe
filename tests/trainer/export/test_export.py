"""unmix-swav export: the classifier reproduces eval-linear in plain torchvision, the trunk loads into torchvision,
config.json and the model card say what the weights are; every arch is described by torchvision's ResNet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image
from torch import nn
from torchvision import models, transforms
from torchvision.models import resnet

from trainer.cli import main
from trainer.evaluation.features import MEAN, STD
from trainer.evaluation.linear import LinearClassifier
from trainer.export.model import architecture, fold_head
from trainer.models.resnet import ARCHS


def export(run_dir: Path, dest: Path, pretrained: str = "pretrain/backbone.pth", linear: str | None = "eval-linear"
           ) -> dict:
    argv = ["export", "--pretrained", str(run_dir / pretrained), "--arch", "resnet_tiny", "--dest", str(dest)]
    assert main(argv + (["--linear", str(run_dir / linear)] if linear else [])) == 0
    return json.loads((dest / "config.json").read_text())


def plain_resnet(config: dict, num_classes: int) -> nn.Module:
    """The model from config.json with torchvision alone (no trainer code)."""
    arch = config["architecture"]
    return resnet.ResNet(getattr(resnet, arch["block"]), arch["layers"], num_classes=num_classes,
                         groups=arch["groups"], width_per_group=arch["width_per_group"])


def config_transform(pre: dict) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(pre["resize"], interpolation=transforms.InterpolationMode(pre["interpolation"]),
                          antialias=pre["antialias"]),
        transforms.CenterCrop(pre["crop"]), transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"])])


@torch.no_grad()
def confusion_of(model: nn.Module, config: dict, val_dir: Path) -> list[list[int]]:
    """(true, predicted) counts over the val folder, classes indexed as config.json lists them."""
    transform, classes = config_transform(config["preprocessing"]), config["classes"]
    confusion = [[0] * len(classes) for _ in classes]
    model.eval()
    for label, name in enumerate(classes):
        paths = sorted((val_dir / name).iterdir())
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
        for predicted in model(batch).argmax(dim=1).tolist():
            confusion[label][predicted] += 1
    return confusion


@pytest.mark.parametrize("dump", ["eval-linear", "eval-linear-bn"])
def test_the_classifier_predicts_in_plain_torchvision_what_eval_linear_scored(run_dir, shapes_dir, tmp_path, dump):
    config = export(run_dir, tmp_path / "export", linear=dump)
    scored = json.loads((run_dir / dump / "metrics.json").read_text())
    model = plain_resnet(config, config["num_classes"])
    model.load_state_dict(safetensors.torch.load_file(tmp_path / "export" / "classifier.safetensors"))  # strict
    assert config["classes"] == scored["classes"] and config["head"]["batchnorm_folded"] == (dump.endswith("bn"))
    confusion = confusion_of(model, config, shapes_dir / "val")
    assert confusion == scored["confusion_matrix"]  # every prediction, not only their count
    top1 = 100 * sum(confusion[i][i] for i in range(len(confusion))) / sum(map(sum, confusion))
    print(f"\n{dump}: exported classifier top-1 {top1:.2f}% vs eval-linear {scored['top1']:.2f}% "
          f"on {sum(map(sum, confusion))} val images")
    assert top1 == pytest.approx(scored["top1"])


def test_the_trunk_loads_into_torchvision_and_is_the_same_from_either_checkpoint(run_dir, tmp_path):
    config = export(run_dir, tmp_path / "a", linear=None)
    export(run_dir, tmp_path / "b", pretrained="pretrain/checkpoint.pth.tar", linear=None)
    weights, other = (safetensors.torch.load_file(tmp_path / name / "trunk.safetensors") for name in "ab")
    assert weights.keys() == other.keys() and all(torch.equal(weights[k], other[k]) for k in weights)
    assert not (tmp_path / "a" / "classifier.safetensors").exists() and config["num_classes"] is None
    missing, unexpected = plain_resnet(config, 1000).load_state_dict(weights, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    backbone = torch.load(run_dir / "pretrain" / "backbone.pth", weights_only=True)
    assert weights.keys() == backbone.keys() and all(torch.equal(weights[k], backbone[k]) for k in weights)


def test_config_and_model_card_record_provenance_and_the_baseline(run_dir, tmp_path):
    config = export(run_dir, tmp_path / "export")
    for name, record in config["files"].items():
        data = (tmp_path / "export" / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert set(config["files"]) == {"trunk.safetensors", "classifier.safetensors"}
    pre = config["preprocessing"]
    assert (pre["resize"], pre["crop"]) == (round(32 * 256 / 224), 32)  # eval-linear --image_size 32
    assert (pre["mean"], pre["std"], pre["interpolation"]) == (list(MEAN), list(STD), "bilinear")
    scored = json.loads((run_dir / "eval-linear" / "metrics.json").read_text())
    assert config["source"]["linear_eval"]["top1"] == scored["top1"]
    assert config["source"]["pretrained"]["file_sha256"] == scored["pretrained"]["sha256"]
    assert config["source"]["pretraining_run"].endswith("pretrain/params.json")
    card = (tmp_path / "export" / "MODEL_CARD.md").read_text()
    random = json.loads((run_dir / "eval-linear-random" / "metrics.json").read_text())
    row = f"| eval-linear | eval-linear (exported head) | top-1 % | {scored['top1']:.2f} | {random['top1']:.2f} | ok |"
    assert row in card and "`nmb_prototypes` | `20`" in card and "## Licence" in card


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_is_rebuilt_from_its_description_in_torchvision(arch):
    description = architecture(arch)
    with torch.device("meta"):
        ours = ARCHS[arch]()
        rebuilt = plain_resnet({"architecture": description}, 1000)
        if description["torchvision_builder"]:
            assert description["torchvision_builder"] == f"torchvision.models.{arch}"
            rebuilt = getattr(models, arch)()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_a_folded_batchnorm_computes_what_the_head_computed():
    torch.manual_seed(0)
    head = LinearClassifier(16, 5, use_bn=True)
    head.bn.running_mean.normal_()
    head.bn.running_var.uniform_(0.1, 3)
    head.bn.weight.data.normal_()
    head.bn.bias.data.normal_()
    head.eval()
    fc = fold_head(head)
    features = torch.randn(64, 16)
    folded = features @ fc["fc.weight"].T + fc["fc.bias"]
    torch.testing.assert_close(folded, head(features), rtol=1e-5, atol=1e-5)


def test_a_new_export_into_an_earlier_one_replaces_it(run_dir, tmp_path):
    export(run_dir, tmp_path / "export")
    config = export(run_dir, tmp_path / "export", linear=None)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["MODEL_CARD.md", "config.json",
                                                                         "trunk.safetensors"]
    assert list(config["files"]) == ["trunk.safetensors"]


@pytest.mark.slow  # builds and serialises every ResNet up to resnet152 (2-17 s each on 2 cores)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_exports_a_trunk_torchvision_loads(arch, tmp_path):
    torch.manual_seed(0)
    trunk = ARCHS[arch]()
    trunk.fc = nn.Identity()
    torch.save(trunk.state_dict(), tmp_path / "backbone.pth")
    assert main(["export", "--pretrained", str(tmp_path / "backbone.pth"), "--arch", arch,
                 "--dest", str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    builder = config["architecture"]["torchvision_builder"]
    model = getattr(models, builder.rsplit(".", 1)[1])() if builder else plain_resnet(config, 1000)
    weights = safetensors.torch.load_file(tmp_path / "export" / "trunk.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    assert torch.equal(model.conv1.weight, trunk.conv1.weight)
