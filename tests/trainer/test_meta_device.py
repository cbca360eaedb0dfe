"""GPU-readiness on the CPU: one pretraining step, one evaluation step and one DETR step on the `meta` device.

A meta tensor has a shape and a device but no data: `.item()`, `.tolist()`, `bool(tensor)`, a copy to the
host, and any op mixing a meta tensor with a non-scalar CPU tensor raise. So a host sync or a stray CPU
tensor in a hot loop fails here the way it would stall (or fail) a CUDA run. The DETR test stubs the host
steps that are not ours: DETR's Hungarian matching (scipy, on the host: one copy a step by design), and two
of transformers' own: its attention-mask shortcut asks `padding_mask.all()` on the host
(masking_utils._ignore_bidirectional_mask_sdpa), and every DetrEncoderLayer in training asks
`torch.isfinite(hidden_states).all()` (the test keeps the encoder in eval mode, which skips that check).
"""

from __future__ import annotations

import argparse

import pytest
import torch

from trainer import config, swav_step
from trainer.cli import build_parser
from trainer.data.photometric import Photometric
from trainer.distributed import DistEnv

META = torch.device("meta")
ENV = DistEnv(0, 1, 0, META)


def test_the_meta_device_catches_host_syncs_and_device_mixing() -> None:
    value = torch.zeros((), device=META)
    for sync in (value.item, lambda: bool(value > 0), value.cpu, lambda: value.tolist()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            sync()
    with pytest.raises(RuntimeError):
        torch.zeros(3, device=META) + torch.zeros(3)


def _pretrain_cfg(*extra: str) -> argparse.Namespace:
    args = build_parser("pretrain").parse_args([
        "--data_path", "unused", "--arch", "resnet_tiny", "--nmb_crops", "2", "2", "--size_crops", "32", "16",
        "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3", "--batch_size", "4",
        "--nmb_prototypes", "20", "--hidden_mlp", "32", "--feat_dim", "16", "--optimizer", "lars",
        "--queue_length", "8", "--epoch_queue_starts", "0", "--freeze_prototypes_niters", "1", *extra])
    cfg = config.resolve(args)
    config.validate(cfg, 1)
    return cfg


def test_one_pretraining_step_with_unmix_a_queue_lars_and_frozen_prototypes_on_meta() -> None:
    cfg = _pretrain_cfg()
    state = swav_step.build_state(cfg, ENV, swav_step.Schedule(iters_per_epoch=10, total_steps=100))
    assert state.queue is not None and state.queue.embeddings.device == META
    state.queue.filled = state.queue.embeddings.shape[1]  # a full queue: its scores join Sinkhorn
    ctx = swav_step.StepContext(cfg, ENV, state.model, Photometric(blur_prob=cfg.blur_prob), None)
    crops = [torch.zeros(4, 3, 32, 32, dtype=torch.uint8)] * 2 + [torch.zeros(4, 3, 16, 16, dtype=torch.uint8)] * 2
    for _ in range(2):  # step 0: prototypes frozen; step 1: trained
        loss, parts, _ = swav_step.train_step(state, ctx, crops, epoch=0)
    assert loss.device == META and {"loss_ori", "loss_mix", "loss_mix_rev", "lam"} <= set(parts)
    assert state.step == 2 and all(p.device == META for p in state.model.parameters())


def test_one_evaluation_step_on_meta() -> None:
    from trainer.evaluation import loop
    from trainer.evaluation.features import encode
    from trainer.evaluation.linear import LinearClassifier, build_pool
    from trainer.models.resnet import build_trunk

    trunk, width = build_trunk("resnet_tiny")
    trunk.to(META).eval()
    features = encode(trunk, torch.zeros(2, 3, 32, 32), META, build_pool(True))  # feature extraction
    assert features.shape == (2, width) and features.device == META
    classifier = LinearClassifier(width, 4, use_bn=True).to(META)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.1, momentum=0.9)
    spec = argparse.Namespace(env=ENV, logits=classifier, optimizer=optimizer)
    totals = torch.zeros(2, dtype=torch.float64, device=META)
    loop.train_batch(spec, torch.zeros(8, width), torch.zeros(8, dtype=torch.long), totals)
    counts = torch.zeros(3, dtype=torch.float64, device=META)
    confusion = torch.zeros(4, 4, dtype=torch.float64, device=META)
    loop.score_batch(spec, torch.zeros(8, width), torch.zeros(8, dtype=torch.long), counts, confusion)
    assert totals.device == counts.device == confusion.device == META


def _fixed_assignment(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                      config) -> torch.Tensor:
    """Stands in for the Hungarian matching (the step's one host copy): target j of an image -> query j."""
    image = torch.cat([torch.full((len(t["class_labels"]),), i) for i, t in enumerate(targets)])
    query = torch.cat([torch.arange(len(t["class_labels"])) for t in targets])
    target = torch.arange(len(image))
    indices = torch.stack([image, query, target])[:, None].expand(3, logits.shape[0], -1)
    return indices.to(logits.device)


def test_one_detr_step_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.detr import loss as detr_loss
    from trainer.detr import train as detr_train
    from trainer.detr.model import build_detr

    args = detr_train.detr_args(coco_path="unused", pretrained="none", dump_path="unused", arch="resnet_tiny",
                                hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=4,
                                num_queries=10, image_size=64, batch_size=2, workers=0, device="cpu")
    torch.manual_seed(0)
    detr, _ = build_detr(args, num_classes=4)
    detr.to(META)
    optimizer = torch.optim.AdamW(detr_train.param_groups(detr, args), lr=args.lr, weight_decay=args.weight_decay)
    monkeypatch.setattr(detr_loss, "match", _fixed_assignment)
    from transformers import masking_utils

    monkeypatch.setattr(masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *args, **kwargs: False)
    batch = {"pixel_values": torch.zeros(2, 3, 64, 64), "pixel_mask": torch.ones(2, 64, 64, dtype=torch.long),
             "labels": [{"class_labels": torch.tensor([1, 2]), "boxes": torch.full((2, 4), 0.5),
                         "image_id": torch.tensor(1), "orig_size": torch.tensor([64, 64])},
                        {"class_labels": torch.tensor([3]), "boxes": torch.full((1, 4), 0.5),
                         "image_id": torch.tensor(2), "orig_size": torch.tensor([64, 64])}]}
    detr.train()
    detr.model.encoder.eval()  # transformers' per-layer isfinite check is a host sync of its own
    criterion = detr_loss.install_set_loss(detr)
    loss, terms = detr_train.train_step(detr, criterion, batch, optimizer, args, DistEnv(0, 1, 0, META))
    assert loss.device == META and set(terms) == set(detr_train.LOGGED_TERMS)
    detr.eval()
    with torch.no_grad():
        logits, boxes, _ = detr_train.eval_step(detr, batch, DistEnv(0, 1, 0, META))
    assert logits.device == boxes.device == META
