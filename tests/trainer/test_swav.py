import math

import numpy as np
import pytest
import torch

from trainer.swav import EmbeddingQueue, sinkhorn, swav_loss


def reference_sinkhorn(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """method.md transcribed literally, in float64, one process."""
    q = np.exp(scores / epsilon).T  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


def reference_loss(scores: list[np.ndarray], assign, temperature, epsilon, iterations, queue=None) -> float:
    batch = scores[0].shape[0]
    total = 0.0
    for i, crop in enumerate(assign):
        assigned = scores[crop] if queue is None else np.concatenate([queue[i], scores[crop]])
        q = reference_sinkhorn(assigned, epsilon, iterations)[-batch:]
        sub = 0.0
        for v in range(len(scores)):
            if v == crop:
                continue
            logits = scores[v] / temperature
            log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
                - logits.max(1, keepdims=True)
            sub += -np.mean(np.sum(q * log_p, axis=1))
        total += sub / (len(scores) - 1)
    return total / len(assign)


def test_sinkhorn_rows_are_distributions_and_prototypes_equipartitioned():
    torch.manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert q.shape == (64, 16)
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-5)
    q_converged = sinkhorn(scores, epsilon=0.05, iterations=200)
    assert torch.allclose(q_converged.sum(dim=0), torch.full((16,), 64 / 16), rtol=1e-3)
    assert (q >= 0).all()


def test_sinkhorn_matches_formula_and_is_float32_under_half_input():
    torch.manual_seed(1)
    scores = torch.randn(32, 10) * 0.3
    q = sinkhorn(scores.half(), epsilon=0.05, iterations=3)
    assert q.dtype == torch.float32
    expected = reference_sinkhorn(scores.half().double().numpy(), 0.05, 3)
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_survives_large_logits():
    scores = torch.tensor([[40.0, -40.0], [-40.0, 40.0]])
    assert torch.isfinite(sinkhorn(scores, epsilon=0.05)).all()


@pytest.mark.parametrize("with_queue", [False, True])
def test_loss_matches_direct_transcription(with_queue):
    torch.manual_seed(2)
    scores = [torch.nn.functional.normalize(torch.randn(8, 12), dim=1) for _ in range(4)]
    queue = [torch.nn.functional.normalize(torch.randn(16, 12), dim=1) for _ in range(2)] if with_queue else None
    loss = swav_loss(scores, (0, 1), temperature=0.1, epsilon=0.05, sinkhorn_iterations=3, queue_scores=queue)
    expected = reference_loss([s.double().numpy() for s in scores], (0, 1), 0.1, 0.05, 3,
                              None if queue is None else [s.double().numpy() for s in queue])
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_loss_gradient_flows_to_predictions_not_codes():
    scores = [torch.randn(8, 6, requires_grad=True) for _ in range(2)]
    swav_loss(scores).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scores)


def test_collapsed_predictions_give_ln_k():
    scores = [torch.zeros(16, 50) for _ in range(3)]
    assert swav_loss(scores).item() == pytest.approx(math.log(50), rel=1e-5)


def test_queue_fills_fifo_and_scores_only_when_full():
    queue = EmbeddingQueue(num_assigned=2, length=6, feat_dim=4, device=torch.device("cpu"))
    prototypes = torch.eye(4)[:3]
    assert queue.scores(prototypes) is None
    for value in (1.0, 2.0, 3.0):
        queue.push([torch.full((2, 4), value), torch.full((2, 4), -value)])
    assert queue.full
    assert queue.embeddings[0, :, 0].tolist() == [3, 3, 2, 2, 1, 1]
    assert queue.embeddings[1, :, 0].tolist() == [-3, -3, -2, -2, -1, -1]
    scores = queue.scores(prototypes)
    assert [s.shape for s in scores] == [(6, 3), (6, 3)]
    restored = EmbeddingQueue(2, 6, 4, torch.device("cpu"))
    restored.load_state_dict(queue.state_dict())
    assert restored.full and torch.equal(restored.embeddings, queue.embeddings)
