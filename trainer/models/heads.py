"""SwAV's projection head and prototypes, and the model that runs a trunk over a list of crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwAVHead(nn.Module):
    """Linear(d, hidden) -> BN -> ReLU -> Linear(hidden, feat_dim) -> L2 normalise -> prototypes."""

    def __init__(self, in_dim: int, hidden_mlp: int = 2048, feat_dim: int = 128, nmb_prototypes: int = 3000):
        super().__init__()
        if hidden_mlp > 0:
            self.projection = nn.Sequential(
                nn.Linear(in_dim, hidden_mlp), nn.BatchNorm1d(hidden_mlp), nn.ReLU(inplace=True),
                nn.Linear(hidden_mlp, feat_dim),
            )
        else:
            self.projection = nn.Linear(in_dim, feat_dim)
        self.prototypes = nn.Linear(feat_dim, nmb_prototypes, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = F.normalize(self.projection(features), dim=1, p=2)
        return embedding, self.prototypes(embedding)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1, p=2))


class SwAVModel(nn.Module):
    """Trunk + head over a list of crops, as the reference SwAV forward: crops of one resolution go through
    the trunk in one pass, then the head runs ONCE over every crop's features, so that its BatchNorm
    normalises all crops together (one pass per resolution would give each its own statistics)."""

    def __init__(self, trunk: nn.Module, head: SwAVHead):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns (embeddings, scores): one (B, feat_dim) and one (B, K) tensor per crop, in input order."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, crop in enumerate(crops):
            groups.setdefault(tuple(crop.shape[1:]), []).append(index)
        features: list[torch.Tensor | None] = [None] * len(crops)
        for indices in groups.values():
            batch = torch.cat([crops[i] for i in indices]) if len(indices) > 1 else crops[indices[0]]
            for i, feature in zip(indices, self.trunk(batch).chunk(len(indices)), strict=True):
                features[i] = feature
        sizes = [crop.shape[0] for crop in crops]
        embeddings, scores = self.head(torch.cat(features))  # type: ignore[arg-type]
        return list(embeddings.split(sizes)), list(scores.split(sizes))
