"""Multi-crop SwAV steps equal a direct transcription of the reference forward and training loop.

The reference (facebookresearch/swav, src/resnet50.py `forward` and main_swav.py `train`) runs the trunk once
per run of same-resolution crops, concatenates the outputs and runs the projection head ONCE, so that the
head's BatchNorm normalises every crop of every resolution together.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from trainer.models.heads import SwAVHead, SwAVModel
from trainer.models.resnet import build_trunk
from trainer.swav import swav_loss

NMB_CROPS, SIZES, BATCH = (2, 4), (32, 16), 8
ASSIGN, TEMPERATURE, EPSILON, ITERATIONS = (0, 1), 0.1, 0.05, 3


def reference_forward(model: SwAVModel, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    idx_crops = torch.cumsum(torch.unique_consecutive(torch.tensor([inp.shape[-1] for inp in inputs]),
                                                      return_counts=True)[1], 0)
    start_idx, output = 0, None
    for end_idx in idx_crops:
        _out = model.trunk(torch.cat(inputs[start_idx:end_idx]))
        output = _out if start_idx == 0 else torch.cat((output, _out))
        start_idx = end_idx
    x = F.normalize(model.head.projection(output), dim=1, p=2)
    return x, model.head.prototypes(x)


@torch.no_grad()
def reference_sinkhorn(out: torch.Tensor) -> torch.Tensor:
    q = torch.exp(out / EPSILON).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(ITERATIONS):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def reference_loss(output: torch.Tensor) -> torch.Tensor:
    loss = 0
    for crop_id in ASSIGN:
        q = reference_sinkhorn(output[BATCH * crop_id:BATCH * (crop_id + 1)].detach())[-BATCH:]
        subloss = 0
        for v in np.delete(np.arange(np.sum(NMB_CROPS)), crop_id):
            x = output[BATCH * v:BATCH * (v + 1)] / TEMPERATURE
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (np.sum(NMB_CROPS) - 1)
    return loss / len(ASSIGN)


def test_a_multicrop_training_step_equals_the_reference_loop_batchnorm_statistics_included():
    """One step, 2x32 + 4x16 crops: loss, every gradient, and after the step every weight and BatchNorm
    running statistic agree to float32 precision. (Later steps drift apart from 1e-7 differences: Sinkhorn
    at epsilon 0.05 amplifies rounding, so a second step is no sharper a test.)"""
    torch.manual_seed(0)
    trunk, dim = build_trunk("resnet_tiny")
    ours = SwAVModel(trunk, SwAVHead(dim, 32, 16, 20)).train()
    reference = copy.deepcopy(ours)
    generator = torch.Generator().manual_seed(1)
    crops = [torch.randn(BATCH, 3, size, size, generator=generator)
             for count, size in zip(NMB_CROPS, SIZES, strict=True) for _ in range(count)]
    for model in (ours, reference):
        model.head.normalize_prototypes()
    loss = swav_loss(ours(crops)[1], ASSIGN, TEMPERATURE, EPSILON, ITERATIONS)
    expected = reference_loss(reference_forward(reference, crops)[1])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for model, value in ((ours, loss), (reference, expected)):
        value.backward()
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
    reference_parameters = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, reference_parameters[name].grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda message, name=name: f"gradient of {name}: {message}")
    state, reference_state = ours.state_dict(), reference.state_dict()
    assert "head.projection.1.running_mean" in state
    for key, value in state.items():
        torch.testing.assert_close(value, reference_state[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda message, key=key: f"{key}: {message}")


def test_a_head_run_per_resolution_is_measurably_not_the_reference():
    """The check above can fail: the earlier forward (head once per resolution) is off by far more."""
    torch.manual_seed(0)
    trunk, dim = build_trunk("resnet_tiny")
    model = SwAVModel(trunk, SwAVHead(dim, 32, 16, 20)).train()
    model.head.normalize_prototypes()
    generator = torch.Generator().manual_seed(1)
    crops = [torch.randn(BATCH, 3, size, size, generator=generator)
             for count, size in zip(NMB_CROPS, SIZES, strict=True) for _ in range(count)]
    per_resolution = [model.head(model.trunk(torch.cat(group)))[1] for group in (crops[:2], crops[2:])]
    separate = swav_loss(list(torch.cat(per_resolution).split(BATCH)), ASSIGN, TEMPERATURE, EPSILON, ITERATIONS)
    expected = reference_loss(reference_forward(model, crops)[1])
    assert abs(separate.item() - expected.item()) > 1e-4


def test_the_head_batchnorm_sees_every_resolution_at_once():
    torch.manual_seed(0)
    trunk, dim = build_trunk("resnet_tiny")
    model = SwAVModel(trunk, SwAVHead(dim, 32, 16, 20)).train()
    seen: list[int] = []
    model.head.projection[1].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)])
    assert seen == [12]
