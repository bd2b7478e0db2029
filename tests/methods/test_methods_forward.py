"""How views go through the networks: one view at a time by default, as lightly's benchmark
(the study's code) and the methods' own code do; ``method.joint_forward`` concatenates views
of one size. Batch norm in training mode makes the two different computations."""

from __future__ import annotations

import pytest
import torch
from conftest import method_names, small_method

from sslbench.methods import Views
from sslbench.nn.backbones import backbone_kind

#: Methods that pass some global views through a target network only (not the online
#: backbone counted here): how many go through the online one. TiCo: view 0 alone; SMoG:
#: one view (view 0 or, on odd steps, view 1); MSN: the anchor (view 1; view 0 is the target).
ONLINE_GLOBAL_VIEWS = {"tico": 1, "smog": 1, "msn": 1}


def _batch_sizes_seen(name: str, fmnist_batch, *overrides: str) -> tuple[list[int], int, int, int]:
    """The batch sizes of the backbone's calls in one training loss, the number of images
    per view, and the numbers of global and local views."""
    torch.manual_seed(0)
    model, _ = small_method(name, *overrides)
    model.train()
    images, aspect, labels = fmnist_batch
    images, aspect = images[:16], aspect[:16]
    views = model.make_views(images, aspect, labels[:16])  # labels: method=supervised's
    seen: list[int] = []
    # A ViT's views all go through its patch embedding (a masked encoder's too, which skips
    # forward_features); a CNN's through forward_features (timm's forward() calls it too).
    vit = backbone_kind(model.backbone) == "vit"
    counted = model.backbone.patch_embed if vit else model.backbone
    forward = counted.forward if vit else counted.forward_features

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return forward(x)

    if vit:
        counted.forward = record
    else:
        counted.forward_features = record
    loss = model.training_loss(views)
    assert torch.isfinite(loss).all()
    online = ONLINE_GLOBAL_VIEWS.get(name, model.num_global_views)
    return seen, images.shape[0], online, model.num_local_views


@pytest.mark.parametrize("name", method_names())
def test_each_view_goes_through_the_backbone_alone_by_default(name: str, fmnist_batch) -> None:
    seen, n, global_views, local = _batch_sizes_seen(name, fmnist_batch)
    assert seen == [n] * (global_views + local)  # BYOL's target backbone is another module


@pytest.mark.parametrize("name", [n for n in method_names() if n not in ONLINE_GLOBAL_VIEWS])
def test_joint_forward_concatenates_views_of_one_size(name: str, fmnist_batch) -> None:
    seen, n, global_views, local = _batch_sizes_seen(
        name, fmnist_batch, "method.joint_forward=true"
    )
    assert seen == [global_views * n] + ([local * n] if local else [])


def test_per_view_simclr_loss_is_lightlys_benchmark_computation(fmnist_batch) -> None:
    """SimCLR's loss on fixed views equals lightly's benchmark step (z0 = head(backbone(x0)),
    z1 = head(backbone(x1)), NT-Xent), and the joint forward gives another number."""
    torch.manual_seed(0)
    model, _ = small_method("simclr")
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
