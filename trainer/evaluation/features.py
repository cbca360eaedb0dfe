"""Images of an ImageSource as tensors, and batched feature extraction with a frozen trunk.

Used by every evaluation: the kNN monitor, the cached-feature linear probe and the training loops.
Features are kept shard-wise: each rank encodes and holds only its strided share (`FeatureShard`), so
memory per rank is (N / W) x D x 4 bytes, never the whole N x D matrix (see README, "Memory per rank").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from trainer.data.sources import loader_timeout
from trainer.distributed import DistEnv
from trainer.errors import UserError
from trainer.run.logs import progress
from trainer.seeding import derive_seed

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


@dataclass(eq=False)
class FeatureShard(Dataset):
    """This rank's share of a dataset's features, in memory: (feature, label) rows.

    Row i is sample `positions[i]` of the dataset; `total` is the dataset's size over all ranks. No rank
    ever holds the whole (total x dim) matrix: with W ranks each holds about total / W rows.
    """

    features: torch.Tensor  # (rows, dim) float32 on the CPU (pinned when encoded on a GPU)
    labels: torch.Tensor  # (rows,) int64
    positions: torch.Tensor  # (rows,) int64: dataset positions of the rows, increasing
    total: int

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[row], self.labels[row]

    @property
    def nbytes(self) -> int:
        return self.features.nbytes + self.labels.nbytes + self.positions.nbytes


def encode(trunk: nn.Module, images: torch.Tensor, device: torch.device, pool: nn.Module | None = None
           ) -> torch.Tensor:
    """One batch of features (B, dim) float32 on `device`: the hot step of every extraction (no host sync)."""
    images = images.to(device, non_blocking=True)
    output = trunk(images) if pool is None else pool(feature_map(trunk, images))
    return output.flatten(1).float()


@torch.no_grad()
def extract_features(trunk: nn.Module, dataset: Dataset, device: torch.device, batch_size: int,
                     workers: int, env: DistEnv | None = None, desc: str = "features",
                     pool: nn.Module | None = None) -> FeatureShard:
    """This rank's share of the features of `dataset` (float32, on the CPU) and their labels.

    Each rank encodes the strided share `shard(len(dataset), env)` and keeps only it: no collective, no
    full matrix. Rows go straight from the device into one preallocated (pinned, on a GPU) buffer with
    asynchronous copies, so the loop never waits for the device; it synchronises once at the end. `pool`
    maps the feature map to vectors; without it the trunk's own pooled output is used.
    """
    positions = shard(len(dataset), env)
    part = torch.utils.data.Subset(dataset, positions)
    on_gpu = device.type == "cuda"
    loader = DataLoader(part, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=on_gpu, persistent_workers=False, timeout=loader_timeout(workers))
    features: torch.Tensor | None = None
    labels = torch.empty(len(positions), dtype=torch.long)
    row = 0
    is_main = env is None or env.is_main
    with PreservedMode(trunk):
        for images, targets in progress(loader, len(loader), desc, enabled=is_main):
            output = encode(trunk, images, device, pool)
            if features is None:
                features = torch.empty(len(positions), output.shape[1], pin_memory=on_gpu)
            features[row:row + len(targets)].copy_(output, non_blocking=on_gpu)
            labels[row:row + len(targets)] = targets
            row += len(targets)
    if on_gpu:
        torch.cuda.synchronize(device)  # the asynchronous copies into `features` are complete
    if features is None:  # an empty share still has the right width
        features = torch.empty(0, _output_dim(trunk, dataset, device, pool))
    return FeatureShard(features, labels, torch.tensor(positions, dtype=torch.long), len(dataset))


def _output_dim(trunk: nn.Module, dataset: Dataset, device: torch.device, pool: nn.Module | None) -> int:
    with PreservedMode(trunk):
        return encode(trunk, dataset[0][0].unsqueeze(0), device, pool).shape[1]


class ShardSampler(Sampler[int]):
    """Shuffles one rank's in-memory share every epoch; every rank yields `per_rank` indices, so all ranks
    run the same number of steps (a short share repeats its first rows, as DistributedSampler pads).

    Seeded by (seed, epoch, rank): a resumed run repeats the order of an uninterrupted one."""

    def __init__(self, share: int, per_rank: int, seed: int, rank: int) -> None:
        if share == 0 and per_rank:
            raise UserError("a rank holds no sample of the cached features: use fewer processes than samples")
        self.share, self.per_rank, self.seed, self.rank, self.epoch = share, per_rank, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.share, generator=torch.Generator().manual_seed(
            derive_seed(self.seed, self.epoch, self.rank)))
        repeats = -(-self.per_rank // max(self.share, 1))
        return iter(order.repeat(repeats)[:self.per_rank].tolist())


def shard_sampler(share: FeatureShard, env: DistEnv, seed: int) -> ShardSampler:
    """The sampler of this rank's share when every rank must take ceil(total / world_size) samples."""
    return ShardSampler(len(share), -(-share.total // env.world_size), seed, env.rank)


def feature_bytes_per_rank(samples: int, dim: int, world_size: int) -> int:
    """Host bytes one rank holds for cached features: its share of rows x dim float32, labels and
    positions (int64). The old all-reduce assembly held the full matrix twice at its peak."""
    rows = -(-samples // world_size)
    return rows * (dim * 4 + 16)
