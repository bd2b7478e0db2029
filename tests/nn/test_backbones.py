"""Backbones start as the reference does: torchvision's resnet18() (the study's, through
lightly's benchmark), not timm's zero-initialised residual branches."""

from __future__ import annotations

import pytest
import torch
import torchvision

from sslbench.errors import BackboneError
from sslbench.nn.backbones import create_backbone


def _statistics(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], float, float]]:
    """Shape, mean and std of every parameter, by name (the classifier left out)."""
    return {
        name: (
            tuple(p.shape),
            float(p.detach().mean()),
            float(p.detach().std()) if p.numel() > 1 else 0.0,
        )
        for name, p in model.named_parameters()
        if not name.startswith("fc.")
    }


def test_resnet18_starts_with_torchvision_parameter_statistics() -> None:
    torch.manual_seed(0)
    ours = _statistics(create_backbone("resnet18"))
    torch.manual_seed(0)
    reference = _statistics(torchvision.models.resnet18())
    assert ours.keys() == reference.keys()  # timm's ResNet keeps torchvision's names
    for name, (shape, mean, std) in reference.items():
        got_shape, got_mean, got_std = ours[name]
        assert got_shape == shape, name
        if name.endswith(("bn1.weight", "bn2.weight", "downsample.1.weight")):
            assert got_mean == mean == 1.0 and got_std == std == 0.0, name  # BN weight 1
        elif ".bn" in name or name.startswith("bn") or "downsample.1" in name:
            assert got_mean == mean == 0.0, name  # BN bias 0
        else:  # convolutions: Kaiming normal (fan_out, ReLU) in both
            assert got_std == pytest.approx(std, rel=0.05), name
            assert abs(got_mean) < 0.1 * std, name


def test_timm_zero_init_is_an_option() -> None:
    zeroed = create_backbone("resnet18", zero_init_last=True)
    assert float(zeroed.layer1[0].bn2.weight.abs().max()) == 0.0
    default = create_backbone("resnet18", zero_init_last=None)  # timm's own default
    assert float(default.layer1[0].bn2.weight.abs().max()) == 0.0
    assert float(create_backbone("resnet18").layer1[0].bn2.weight.min()) == 1.0


def test_models_without_the_option_accept_false_and_refuse_true() -> None:
    model = create_backbone("vit_tiny_patch16_224", zero_init_last=False)
    assert model.num_features == 192
    with pytest.raises(BackboneError, match="backbone.zero_init_last=false"):
        create_backbone("vit_tiny_patch16_224", zero_init_last=True)
