"""`unmix-swav export` of a ResNet-50: export time, file sizes, and the exported classifier's top-1 in plain
torchvision against eval-linear's on the same validation images.

The trunk is a randomly initialised resnet50 (seeded) saved as backbone.pth: export time and sizes depend on the
architecture, not on the values. eval-linear trains its head on it for `--epochs` on builtin:shapes at
`--image_size` px (CPU), then the export runs `--repeats` times. Prints measurements only.

    python benchmarks/bench_export.py [--arch resnet50] [--repeats 3] [--image_size 32] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import resnet

from trainer.cli import main
from trainer.data.synthetic import make_shapes
from trainer.models.resnet import ARCHS, build_trunk, trunk_state_dict


def plain_top1(folder: Path, val_dir: Path) -> float:
    """Top-1 of classifier.safetensors in torchvision's ResNet with config.json's preprocessing alone."""
    config = json.loads((folder / "config.json").read_text())
    arch, pre = config["architecture"], config["preprocessing"]
    model = resnet.ResNet(getattr(resnet, arch["block"]), arch["layers"], num_classes=config["num_classes"],
                          groups=arch["groups"], width_per_group=arch["width_per_group"]).eval()
    model.load_state_dict(safetensors.torch.load_file(folder / "classifier.safetensors"))
    transform = transforms.Compose([
        transforms.Resize(pre["resize"], interpolation=transforms.InterpolationMode(pre["interpolation"]),
                          antialias=pre["antialias"]),
        transforms.CenterCrop(pre["crop"]), transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"])])
    hits = total = 0
    with torch.no_grad():
        for label, name in enumerate(config["classes"]):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in sorted((val_dir / name).iterdir())])
            hits += int((model(batch).argmax(1) == label).sum())
            total += len(batch)
    return 100.0 * hits / total


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", choices=list(ARCHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_shapes(str(root / "data"), num_classes=4, train_per_class=16, val_per_class=8, image_size=32, seed=0)
        torch.manual_seed(0)
        trunk, _ = build_trunk(args.arch)
        backbone = root / "run" / "pretrain" / "backbone.pth"
        backbone.parent.mkdir(parents=True)
        torch.save(trunk_state_dict(trunk), backbone)
        assert main(["eval-linear", "--data_path", str(root / "data"), "--pretrained", str(backbone), "--arch",
                     args.arch, "--image_size", str(args.image_size), "--epochs", str(args.epochs), "--workers", "0",
                     "--device", "cpu", "--batch_size", "16", "--dump_path", str(root / "run" / "eval-linear")]) == 0
        seconds = []
        for repeat in range(args.repeats):
            dest = root / f"export{repeat}"
            started = time.perf_counter()
            assert main(["export", "--pretrained", str(backbone), "--arch", args.arch, "--dest", str(dest),
                         "--linear", str(root / "run" / "eval-linear")]) == 0
            seconds.append(time.perf_counter() - started)
        scored = json.loads((root / "run" / "eval-linear" / "metrics.json").read_text())["top1"]
        print(f"\n{args.arch} (random init), torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"export time: median {statistics.median(seconds):.2f} s of {args.repeats} "
              f"({', '.join(f'{s:.2f}' for s in seconds)})")
        for path in sorted((root / "export0").iterdir()):
            print(f"  {path.name}: {path.stat().st_size / 2**20:.2f} MiB ({path.stat().st_size} bytes)")
        print(f"backbone.pth: {backbone.stat().st_size / 2**20:.2f} MiB")
        exported = plain_top1(root / "export0", root / "data" / "val")
        print(f"top-1 on the {args.image_size}-px val split: exported classifier in plain torchvision "
              f"{exported:.2f}% vs eval-linear {scored:.2f}%")


if __name__ == "__main__":
    sys.exit(main_bench())
