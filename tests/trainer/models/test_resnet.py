import pytest
import torch

from trainer.errors import UserError
from trainer.models.heads import SwAVHead, SwAVModel
from trainer.models.resnet import build_reference, build_trunk, trunk_state_dict


@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet18", "resnet50"])
def test_trunk_export_loads_into_torchvision_missing_only_fc(arch):
    trunk, dim = build_trunk(arch)
    reference = build_reference(arch)
    result = reference.load_state_dict(trunk_state_dict(trunk), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert reference.fc.in_features == dim


def test_unknown_arch():
    with pytest.raises(UserError, match="resnet_tiny"):
        build_trunk("alexnet")


def test_model_batches_same_resolution_and_keeps_crop_order():
    torch.manual_seed(0)
    trunk, dim = build_trunk("resnet_tiny")
    model = SwAVModel(trunk, SwAVHead(dim, 32, 16, 10)).eval()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 32, 32)]
    embeddings, scores = model(crops)
    assert [s.shape for s in scores] == [(2, 10)] * 3
    alone_embedding, _ = model([crops[1]])
    assert torch.allclose(embeddings[1], alone_embedding[0], atol=1e-5)
    assert torch.allclose(embeddings[0].norm(dim=1), torch.ones(2), atol=1e-5)
