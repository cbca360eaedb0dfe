import math

import pytest
import torch

from trainer.optim import LARC, build_optimizer, learning_rate


def apex_larc_reference(params, lr, wd, trust=0.001, eps=1e-8, momentum_buffers=None):
    """apex.parallel.LARC(clip=False) + SGD(momentum 0.9), one parameter at a time."""
    updated = []
    for i, (p, g) in enumerate(params):
        g = g.clone()
        p_norm, g_norm = p.norm(), g.norm()
        if p_norm != 0 and g_norm != 0:
            adaptive = trust * p_norm / (g_norm + p_norm * wd + eps)
            g = (g + wd * p) * adaptive
        buf = g if momentum_buffers[i] is None else 0.9 * momentum_buffers[i] + g
        momentum_buffers[i] = buf
        updated.append(p - lr * buf)
    return updated


def test_larc_matches_per_parameter_reference_over_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[0].bias.zero_()  # a zero-norm parameter takes the unscaled path
    optimizer = LARC(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4))
    buffers = [None] * len(list(model.parameters()))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 5)).pow(2).sum().backward()
        expected = apex_larc_reference([(p.detach().clone(), p.grad.clone()) for p in model.parameters()],
                                       0.5, 1e-4, momentum_buffers=buffers)
        optimizer.step()
        for p, e in zip(model.parameters(), expected, strict=True):
            assert torch.allclose(p.detach(), e, atol=1e-6)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4  # restored after each step


def test_warmup_then_cosine():
    kwargs = dict(iters_per_epoch=10, epochs=20, base_lr=4.8, final_lr=0.0048, warmup_epochs=2, start_warmup=0.3)
    assert learning_rate(0, **kwargs) == pytest.approx(0.3)
    assert learning_rate(19, **kwargs) == pytest.approx(4.8)
    assert learning_rate(20, **kwargs) == pytest.approx(4.8)
    mid = 20 + 90
    assert learning_rate(mid, **kwargs) == pytest.approx(0.0048 + 0.5 * (4.8 - 0.0048) * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(199, **kwargs) == pytest.approx(0.0048, abs=2e-3)
    values = [learning_rate(i, **kwargs) for i in range(20, 200)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_no_warmup_starts_at_base_lr():
    assert learning_rate(0, 10, 5, 0.6, 0.0006, 0, 0.0) == pytest.approx(0.6)


def test_build_optimizer_lars_is_larc_around_sgd_and_adamw_keeps_its_decay():
    weight = torch.nn.Parameter(torch.ones(3))
    lars = build_optimizer([weight], "lars", lr=0.6, weight_decay=1e-6)
    assert isinstance(lars, LARC) and isinstance(lars.optimizer, torch.optim.SGD)
    assert (lars.param_groups[0]["lr"], lars.param_groups[0]["momentum"], lars.trust_coefficient) == (0.6, 0.9, 0.001)
    adamw = build_optimizer([weight], "adamw", lr=1e-3, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW)
    assert (adamw.param_groups[0]["lr"], adamw.param_groups[0]["weight_decay"]) == (1e-3, 0.05)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer([weight], "rmsprop", lr=1.0, weight_decay=0.0)
