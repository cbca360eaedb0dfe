"""transformers' DETR whose convolutional backbone is our torchvision trunk, with our weights.

transformers builds its backbone from a config; we give it a throwaway placeholder sized so that the
input projection expects the trunk's width, then put the trunk in its place. As in DETR: every
BatchNorm of the trunk becomes a FrozenBatchNorm2d (statistics and affine terms fixed), the stem and
layer1 are not trained, and only layer4's map (stride 32) feeds the transformer.
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch import nn
from torchvision.models.resnet import ResNet
from torchvision.ops import FrozenBatchNorm2d
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from trainer.errors import UserError
from trainer.models.pretrained import LoadReport, is_random_init, load_pretrained_trunk
from trainer.models.resnet import build_trunk

log = logging.getLogger(__name__)
TRAINED_STAGES = ("layer2.", "layer3.", "layer4.")


class TrunkFeatures(nn.Module):
    """Runs the trunk up to layer4 and returns [feature map], the list DetrConvEncoder iterates over."""

    def __init__(self, trunk: ResNet) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(pixel_values))))
        return [t.layer4(t.layer3(t.layer2(t.layer1(x))))]


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm2d under `module` by a FrozenBatchNorm2d holding the same tensors."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
            replaced += 1
        else:
            replaced += freeze_batchnorm(child)
    return replaced


def detr_config(args: argparse.Namespace, num_classes: int, feature_dim: int) -> DetrConfig:
    if args.hidden_dim % args.nheads:
        raise UserError(f"--hidden_dim {args.hidden_dim} is not divisible by --nheads {args.nheads}; "
                        "pick a multiple (DETR: 256 and 8)")
    # The placeholder backbone is discarded; it only fixes the input projection's width to the trunk's.
    placeholder = ResNetConfig(embedding_size=8, hidden_sizes=[feature_dim], depths=[1],
                               layer_type="bottleneck", out_features=["stage1"])
    return DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=placeholder,
        num_labels=num_classes, num_queries=args.num_queries, d_model=args.hidden_dim,
        encoder_layers=args.enc_layers, decoder_layers=args.dec_layers,
        encoder_ffn_dim=args.dim_feedforward, decoder_ffn_dim=args.dim_feedforward,
        encoder_attention_heads=args.nheads, decoder_attention_heads=args.nheads,
        dropout=args.dropout, auxiliary_loss=True)


def detr_initialisation(model: DetrForObjectDetection) -> None:
    """Re-draw what transformers initialises as N(0, 0.02) the way DETR does before training from scratch.

    With N(0, 0.02) object queries every query decodes to the same box and training stalls there; DETR
    draws queries from N(0, 1), transformer matrices Xavier-uniform and heads with PyTorch's defaults.
    """
    for stack in (model.model.encoder, model.model.decoder):
        for parameter in stack.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
    nn.init.normal_(model.model.query_position_embeddings.weight)
    for layer in (model.model.input_projection, model.class_labels_classifier, *model.bbox_predictor.layers):
        layer.reset_parameters()


def backbone_trunk(model: DetrForObjectDetection) -> ResNet:
    return model.model.backbone.model.trunk


def build_detr(args: argparse.Namespace, num_classes: int) -> tuple[DetrForObjectDetection, LoadReport | None]:
    """DETR with our `args.arch` trunk initialised from `args.pretrained` (or seeded random for `random`)."""
    trunk, feature_dim = build_trunk(args.arch)
    report = None
    if is_random_init(args.pretrained):
        log.warning("--pretrained %s: the backbone starts from random weights (a baseline, not a transfer)",
                    args.pretrained or "random")
    else:
        report = load_pretrained_trunk(trunk, args.pretrained)
    frozen = freeze_batchnorm(trunk)
    model = DetrForObjectDetection(detr_config(args, num_classes, feature_dim))
    model.model.backbone.model = TrunkFeatures(trunk)
    detr_initialisation(model)
    train_backbone = args.lr_backbone > 0
    for name, parameter in trunk.named_parameters():
        parameter.requires_grad_(train_backbone and name.startswith(TRAINED_STAGES))
    log.info("DETR: %s trunk (%d BatchNorms frozen, backbone %s), %d classes, %.1f M parameters",
             args.arch, frozen, "trained from layer2" if train_backbone else "frozen", num_classes,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, report
