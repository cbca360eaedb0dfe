from __future__ import annotations

import torch

from trainer.models.heads import SwAVHead
from trainer.presets import preset


def smallest_score_spread(head: SwAVHead) -> float:
    """min over unit embeddings z of |scores - mean(scores)|: 0 when some z scores every prototype alike."""
    head.normalize_prototypes()
    prototypes = head.prototypes.weight.detach()
    centred = prototypes - prototypes.mean(dim=0)
    return float(torch.linalg.eigvalsh(centred.T @ centred).clamp(min=0).min().sqrt())


def test_demo_cpu_prototypes_leave_no_direction_of_uniform_scores() -> None:
    """The demo collapsed to ln(K) when embeddings could score all prototypes alike (feat_dim >= K)."""
    flags = preset("demo_cpu")
    torch.manual_seed(0)
    head = SwAVHead(512, flags["hidden_mlp"], flags["feat_dim"], flags["nmb_prototypes"])
    assert smallest_score_spread(head) > 0.3
    assert flags["freeze_prototypes_niters"] >= 10**6  # kept at that random initialisation for the whole run
    torch.manual_seed(0)
    assert smallest_score_spread(SwAVHead(512, 256, feat_dim=64, nmb_prototypes=30)) < 1e-3  # the old recipe
