"""How views go through the networks: one view at a time by default, as lightly's benchmark
(the study's code) and the methods' own code do; ``method.joint_forward`` concatenates views
of one size. Batch norm in training mode makes the two different computations."""

from __future__ import annotations

import pytest
import torch
from conftest import build_method

from sslbench.methods import Views

#: Narrow heads, 2 local views: the unit test's cost stays small on a CPU.
SMALL = {
    "simclr": ["method.hidden_dim=64", "method.output_dim=32"],
    "simsiam": ["method.hidden_dim=64", "method.output_dim=64", "method.predictor_hidden_dim=16"],
    "byol": ["method.hidden_dim=64", "method.output_dim=32", "method.predictor_hidden_dim=64"],
    "barlowtwins": ["method.hidden_dim=64", "method.output_dim=64"],
    "vicreg": ["method.hidden_dim=64", "method.output_dim=64"],
    "swav": ["method.hidden_dim=64", "method.output_dim=32", "method.n_prototypes=16",
             "method.local_views.count=2"],
    "vicregl": ["method.hidden_dim=64", "method.output_dim=64", "backbone.small_stem=true",
                "method.local_views.count=2"],
}  # fmt: skip


def _batch_sizes_seen(name: str, fmnist_batch, *overrides: str) -> tuple[list[int], int]:
    """The batch sizes of the backbone's calls in one training loss, and the number of
    images per view."""
    torch.manual_seed(0)
    model, _ = build_method(f"method={name}", *SMALL[name], *overrides)
    model.train()
    images, aspect, _ = fmnist_batch
    images, aspect = images[:16], aspect[:16]
    views = model.make_views(images, aspect)
    seen: list[int] = []
    forward_features = model.backbone.forward_features

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return forward_features(x)

    model.backbone.forward_features = record  # timm's forward() calls it too
    loss = model.training_loss(views)
    assert torch.isfinite(loss).all()
    return seen, images.shape[0]


@pytest.mark.parametrize("name", list(SMALL))
def test_each_view_goes_through_the_backbone_alone_by_default(name: str, fmnist_batch) -> None:
    seen, n = _batch_sizes_seen(name, fmnist_batch)
    local = 2 if name in ("swav", "vicregl") else 0
    assert seen == [n] * (2 + local)  # BYOL's target backbone is another module


@pytest.mark.parametrize("name", list(SMALL))
def test_joint_forward_concatenates_views_of_one_size(name: str, fmnist_batch) -> None:
    seen, n = _batch_sizes_seen(name, fmnist_batch, "method.joint_forward=true")
    local = [2 * n] if name in ("swav", "vicregl") else []
    assert seen == [2 * n, *local]


def test_per_view_simclr_loss_is_lightlys_benchmark_computation(fmnist_batch) -> None:
    """SimCLR's loss on fixed views equals lightly's benchmark step (z0 = head(backbone(x0)),
    z1 = head(backbone(x1)), NT-Xent), and the joint forward gives another number."""
    torch.manual_seed(0)
    model, _ = build_method("method=simclr", *SMALL["simclr"])
    model.train()
    images, aspect, _ = fmnist_batch
    views = model.make_views(images[:32], aspect[:32])
    per_view = model.training_loss(views)
    x0, x1 = views.global_views
    z0 = model.projection_head(model.backbone(x0))
    z1 = model.projection_head(model.backbone(x1))
    torch.testing.assert_close(per_view, model.criterion(z0, z1))
    model.joint_forward = True
    joint = model.training_loss(Views(global_views=[x0, x1], local_views=[]))
    assert abs(float(joint.detach()) - float(per_view.detach())) > 1e-4
