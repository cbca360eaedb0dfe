"""LARS (LARC without clipping, as SwAV uses apex's) around SGD, and the per-iteration LR schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class LARC:
    """Layer-wise adaptive rate scaling around an optimizer, vectorised with foreach ops (no host syncs).

    For every parameter with non-zero weight and gradient norms, the gradient becomes
    (grad + wd * p) * trust * |p| / (|grad| + wd * |p| + eps); the wrapped optimizer then steps with its
    own weight decay switched off, exactly as apex.parallel.LARC(clip=False).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, trust_coefficient: float = 0.001, eps: float = 1e-8):
        self.optimizer = optimizer
        self.trust_coefficient = trust_coefficient
        self.eps = eps

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        saved_decay = []
        for group in self.optimizer.param_groups:
            saved_decay.append(group["weight_decay"])
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.rescale_gradients(params, group["weight_decay"])
            group["weight_decay"] = 0.0
        self.optimizer.step()
        for group, weight_decay in zip(self.optimizer.param_groups, saved_decay, strict=True):
            group["weight_decay"] = weight_decay

    def rescale_gradients(self, params: list[torch.Tensor], weight_decay: float) -> None:
        """grad <- (grad + wd * p) * adaptive rate, for all `params` at once."""
        grads = [p.grad for p in params]
        param_norms = torch.stack(torch._foreach_norm(params))
        grad_norms = torch.stack(torch._foreach_norm(grads))
        adaptive = self.trust_coefficient * param_norms / (grad_norms + param_norms * weight_decay + self.eps)
        # Decay is added to every gradient in place (no temporary copy of the parameters); apex skips
        # parameters with a zero norm: a zero parameter adds no decay (scale 1 keeps its gradient) and a
        # zero gradient must stay zero (scale 0 removes the decay just added).
        scale = torch.where(param_norms > 0, torch.where(grad_norms > 0, adaptive, 0.0), 1.0)
        if weight_decay:
            torch._foreach_add_(grads, params, alpha=weight_decay)
        torch._foreach_mul_(grads, list(scale.unbind()))


OPTIMIZERS = ("lars", "adamw")


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float,
                    weight_decay: float) -> LARC | torch.optim.AdamW:
    """lars: the method's SGD (momentum 0.9) wrapped in LARC. adamw: for short small-batch runs (CPU demo),
    where LARC's per-tensor step of lr * 0.001 of the weight norm either barely moves the trunk or, at a
    learning rate high enough to move it in a few hundred steps, made kNN accuracy fall below a random trunk."""
    if name == "lars":
        return LARC(torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay), trust_coefficient=0.001)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def learning_rate(iteration: int, iters_per_epoch: int, epochs: int, base_lr: float, final_lr: float,
                  warmup_epochs: int, start_warmup: float) -> float:
    """Linear warmup from start_warmup to base_lr, then cosine to final_lr; one value per iteration."""
    warmup_iters = iters_per_epoch * warmup_epochs
    if iteration < warmup_iters:
        # np.linspace(start_warmup, base_lr, warmup_iters) as in SwAV
        return start_warmup + (base_lr - start_warmup) * iteration / max(warmup_iters - 1, 1)
    cosine_iters = iters_per_epoch * (epochs - warmup_epochs)
    t = iteration - warmup_iters
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * t / max(cosine_iters, 1)))
