"""Images of an ImageSource as tensors, and batched feature extraction with a frozen trunk.

Used by every evaluation: the kNN monitor, the cached-feature linear probe and the training loops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from trainer.data.sources import loader_timeout
from trainer.distributed import DistEnv, all_reduce_sum
from trainer.errors import UserError
from trainer.run.logs import progress

log = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)


def eval_transform(image_size: int) -> transforms.Compose:
    """Resize to image_size * 256/224 then centre-crop: the paper's 256 -> 224 at any size."""
    return transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def train_transform(image_size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


class SourceDataset(Dataset):
    """(image tensor, label) for the samples `indices` of an ImageSource (all of them by default).

    An undecodable image (load returns None, already logged by the source) is replaced by the next sample,
    label included, so one bad file costs one duplicate instead of a crashed job.
    """

    def __init__(self, source, transform: nn.Module | transforms.Compose,
                 indices: Sequence[int] | None = None, targets: Sequence[int] | None = None):
        self.source = source
        self.transform = transform
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.targets = list(source.targets) if targets is None else list(targets)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.indices)):
            index = self.indices[(position + offset) % len(self.indices)]
            image = self.source.load(index)
            if image is not None:
                return self.transform(image), self.targets[index]
        raise UserError("no image of the dataset could be decoded; check the data path and the files")


def aligned_targets(train_classes: Sequence[str], source) -> list[int]:
    """`source`'s targets re-indexed by `train_classes`, so train and val agree whatever folders exist."""
    index_of = {name: i for i, name in enumerate(train_classes)}
    unknown = sorted(set(source.classes) - set(index_of))
    if unknown:
        raise UserError(f"val classes {unknown[:3]} have no train folder; val must use the train class names")
    return [index_of[source.classes[t]] for t in source.targets]


def shard(count: int, env: DistEnv | None) -> list[int]:
    """Indices of this rank's share of `count` samples (strided, no padding so nothing counts twice)."""
    if env is None or env.world_size == 1:
        return list(range(count))
    return list(range(env.rank, count, env.world_size))


def feature_map(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last convolutional feature map of a torchvision-style ResNet trunk, before pooling."""
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(images))))
    return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))


class PreservedMode:
    """Put a module in eval mode and give every submodule back its own train/eval flag afterwards."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc_info: object) -> None:
        for module, training in self.modes:
            module.training = training


@torch.no_grad()
def extract_features(trunk: nn.Module, dataset: SourceDataset, device: torch.device, batch_size: int,
                     workers: int, env: DistEnv | None = None, desc: str = "features",
                     pool: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 on the CPU and labels (N,) of the whole dataset, in dataset order.

    Under several ranks each rank encodes a strided share and a sum all-reduce assembles the full matrix
    on every rank. `pool` maps the feature map to vectors; without it the trunk's own pooled output is used.
    """
    positions = shard(len(dataset), env)
    part = torch.utils.data.Subset(dataset, positions)
    loader = DataLoader(part, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=device.type == "cuda", persistent_workers=False, timeout=loader_timeout(workers))
    chunks: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    is_main = env is None or env.is_main
    with PreservedMode(trunk):
        for images, targets in progress(loader, len(loader), desc, enabled=is_main):
            images = images.to(device, non_blocking=True)
            output = trunk(images) if pool is None else pool(feature_map(trunk, images))
            chunks.append(output.flatten(1).float().cpu())
            labels.append(targets)
    dim = chunks[0].shape[1] if chunks else _output_dim(trunk, dataset, device, pool)
    features = torch.zeros(len(dataset), dim)
    all_labels = torch.zeros(len(dataset), dtype=torch.long)
    if chunks:
        rows = torch.tensor(positions)
        features[rows] = torch.cat(chunks)
        all_labels[rows] = torch.cat(labels)
    if env is not None and env.is_distributed:
        features, all_labels = _assemble(features, all_labels, device)
    return features, all_labels


def _output_dim(trunk: nn.Module, dataset: SourceDataset, device: torch.device,
                pool: nn.Module | None) -> int:
    # A rank with an empty share still has to contribute a correctly shaped zero matrix.
    with PreservedMode(trunk):
        image = dataset[0][0].unsqueeze(0).to(device)
        output = trunk(image) if pool is None else pool(feature_map(trunk, image))
    return output.flatten(1).shape[1]


def _assemble(features: torch.Tensor, labels: torch.Tensor, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    # nccl reduces device tensors only; gloo works on the CPU.
    features, labels = features.to(device), labels.to(device)
    all_reduce_sum(features)
    all_reduce_sum(labels)
    return features.cpu(), labels.cpu()
