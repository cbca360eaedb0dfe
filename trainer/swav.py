"""SwAV's swapped-prediction loss with Sinkhorn-Knopp codes, and the per-rank embedding queue.

Definitions follow ../shared/docs/method.md. Sinkhorn runs in float32 (also under autocast) and
all-reduces its row sums and total so that the equipartition holds over the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from trainer.distributed import all_reduce_max, all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Codes Q (B, K) for scores (B, K): each row a distribution over the K prototypes.

    After the final rescaling each sample's codes sum to 1 and, over the samples of all ranks, every
    prototype receives 1/K of the mass (up to the finite number of iterations).
    """
    logits = scores.float() / epsilon
    # A shift shared by all ranks cancels in the first normalisation and keeps exp() finite.
    shift = all_reduce_max(logits.max().clone())
    q = torch.exp(logits - shift).t()  # (K, B): rows are prototypes, columns samples
    num_prototypes = q.shape[0]
    global_batch = q.shape[1] * world_size()
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= global_batch
    q *= global_batch
    return q.t()


def swav_loss(
    scores: Sequence[torch.Tensor],
    crops_for_assign: Sequence[int] = (0, 1),
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    queue_scores: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean over assigned crops of the mean over the other crops of CE(Q_assigned, softmax(scores_v / T)).

    `scores`: one (B, K) tensor per crop. `queue_scores`: one (L, K) tensor per assigned crop (the queue's
    embeddings scored against the current prototypes), prepended before Sinkhorn; only the batch's own
    rows of Q are used.
    """
    batch = scores[0].shape[0]
    log_probs = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=torch.float32)
    for i, crop_id in enumerate(crops_for_assign):
        with torch.no_grad():
            assigned = scores[crop_id].detach().float()
            if queue_scores is not None:
                assigned = torch.cat((queue_scores[i].detach().float(), assigned))
            codes = sinkhorn(assigned, epsilon, sinkhorn_iterations)[-batch:]
        others = [v for v in range(len(scores)) if v != crop_id]
        subloss = sum(-(codes * log_probs[v]).sum(dim=1).mean() for v in others)
        total = total + subloss / len(others)
    return total / len(crops_for_assign)


class EmbeddingQueue:
    """Per-rank FIFO of the last `length` embeddings of each assigned crop (SwAV's queue).

    It is used only once full, and scored against the current prototypes at every step.
    """

    def __init__(self, num_assigned: int, length: int, feat_dim: int, device: torch.device):
        self.embeddings = torch.zeros(num_assigned, length, feat_dim, device=device)
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.filled >= self.embeddings.shape[1]

    def scores(self, prototypes: torch.Tensor) -> list[torch.Tensor] | None:
        """(length, K) scores per assigned crop against `prototypes` (K, feat_dim), or None until full."""
        if not self.full:
            return None
        return [emb @ prototypes.detach().t() for emb in self.embeddings]

    @torch.no_grad()
    def push(self, embeddings: Sequence[torch.Tensor]) -> None:
        """Insert the newest batch (one (B, feat_dim) tensor per assigned crop) at the front."""
        batch = embeddings[0].shape[0]
        self.embeddings[:, batch:] = self.embeddings[:, :-batch].clone()
        for i, emb in enumerate(embeddings):
            self.embeddings[i, :batch] = emb.detach().float()
        self.filled = min(self.filled + batch, self.embeddings.shape[1])

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"embeddings": self.embeddings.cpu(), "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        self.embeddings.copy_(state["embeddings"].to(self.embeddings.device))
        self.filled = int(state["filled"])
