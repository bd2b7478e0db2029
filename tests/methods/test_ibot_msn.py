"""iBOT and MSN (PMSN as MSN's ``prior: power_law``), the ViT-only methods that mask the
student's tokens: iBOT's block-wise masks (per image, reproducible, about the drawn ratio),
its patch loss over masked tokens only, teachers without gradients, MSN's dropped tokens,
prior and undecayed prototypes, the refusal of a ResNet, and one tiny real run each.

Unit tests run the tiny ViT (vit_tiny, 8-px patches at 32 px: 4x4 patches, 2x2 on the 16-px
local views) with each class's small_overrides, on seeded noise views, without a Trainer.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import (
    TINY_RUN,
    configured_optimizers,
    correlated_views,
    one_line_error,
    small_method,
)
from lightly.loss import MSNLoss, PMSNLoss

from sslbench.cli import main
from sslbench.methods import Views
from sslbench.methods.ibot import block_masks, ibot_masks, prediction_ratios

IBOT_MASKS = {"probability": 0.5, "ratio": (0.1, 0.5), "aspect_ratio": (0.3, 1 / 0.3),
              "attempts": 10}  # fmt: skip


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def multicrop_views(n: int = 16, seed: int = 0) -> Views:
    """Two correlated 32-px global views and two 16-px local views of seeded noise."""
    views = correlated_views(n, seed)
    noise = generator(seed + 1)
    views.local_views = [torch.randn(n, 3, 16, 16, generator=noise) for _ in range(2)]
    return views


# -- iBOT's masks -----------------------------------------------------------------------------
def test_ibot_masks_are_drawn_per_image_and_reproducible_from_the_seed() -> None:
    masks = ibot_masks(256, (14, 14), generator(0), **IBOT_MASKS)
    assert masks.shape == (256, 14, 14) and masks.dtype == torch.bool
    assert torch.equal(masks, ibot_masks(256, (14, 14), generator(0), **IBOT_MASKS))
    assert not torch.equal(masks, ibot_masks(256, (14, 14), generator(1), **IBOT_MASKS))
    masked = masks.flatten(1).any(dim=1)
    # each image masked with probability 1/2, each masked one its own blocks
    assert 0.4 < float(masked.float().mean()) < 0.6
    assert len({tuple(m.flatten().tolist()) for m in masks[masked]}) == int(masked.sum())


def test_ibot_masks_cover_about_the_drawn_ratio_never_more() -> None:
    ratios = prediction_ratios(512, generator(0), 1.0, (0.1, 0.5))
    assert float(ratios.min()) >= 0.1 and float(ratios.max()) <= 0.5
    masks = block_masks(ratios, (14, 14), generator(1))
    fraction = masks.flatten(1).float().mean(dim=1)
    assert bool((fraction <= ratios + 1e-6).all())  # BEiT's rule: within the budget
    assert float((fraction / ratios).mean()) > 0.95  # and close to it
    assert float((fraction - ratios).abs().max()) < 0.15
    # a ratio of 0 masks nothing
    assert not block_masks(torch.zeros(8), (14, 14), generator(2)).any()


def test_a_batch_without_any_mask_still_masks_one_patch() -> None:
    none = dict(IBOT_MASKS, probability=0.0)
    masks = ibot_masks(4, (4, 4), generator(0), **none)
    assert int(masks.sum()) == 1 and bool(masks[0, 0, 0])


def test_the_methods_masks_come_from_its_mask_generator() -> None:
    method, _ = small_method("ibot")
    views = multicrop_views()
    first, second = method.global_view_masks(views), method.global_view_masks(views)
    assert [m.shape for m in first] == [(16, 4, 4)] * 2  # 32-px views of 8-px patches
    assert all(
        torch.equal(a, b) for a, b in zip(first, second, strict=True)
    )  # the step's generator
    assert not torch.equal(first[0], first[1])  # each view its own


# -- iBOT's patch loss -------------------------------------------------------------------------
def _loss_with_teacher_patches_moved(method, views: Views, where: str) -> torch.Tensor:
    """The training loss when the teacher's patch tokens are moved at the masked or the
    unmasked positions of the student's masks (its [CLS] token left as it is)."""
    masks = iter(method.global_view_masks(views))
    original = method.backbone_target.forward_features
    noise = generator(5)

    def moved(x: torch.Tensor) -> torch.Tensor:
        tokens = original(x).clone()
        mask = next(masks).flatten(1)
        chosen = mask if where == "masked" else ~mask
        patches = tokens[:, 1:]
        patches[chosen] += 3.0 * torch.randn(patches[chosen].shape, generator=noise)
        return tokens

    method.backbone_target.forward_features = moved
    try:
        return method.training_loss(views)
    finally:
        del method.backbone_target.forward_features


def test_the_patch_loss_reads_the_teacher_at_masked_tokens_only() -> None:
    torch.manual_seed(0)
    method, _ = small_method("ibot")
    views = multicrop_views()
    masks = torch.cat(method.global_view_masks(views))
    assert masks.any() and (~masks).any()
    state = copy.deepcopy(method.state_dict())  # the losses' centres move at each call
    with torch.no_grad():
        plain = method.training_loss(views)
        method.load_state_dict(state)
        unmasked = _loss_with_teacher_patches_moved(method, views, "unmasked")
        method.load_state_dict(state)
        masked = _loss_with_teacher_patches_moved(method, views, "masked")
    torch.testing.assert_close(unmasked, plain)
    assert abs(float(masked) - float(plain)) > 1e-3


# -- both methods ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("ibot", ()),
        ("ibot", ("method.shared_head=false",)),
        ("msn", ()),
        ("msn", ("method.mask_local_views=true", "method.joint_forward=true")),
    ],  # fmt: skip
)
def test_the_teacher_gets_no_gradient_and_the_student_does(name: str, overrides) -> None:
    torch.manual_seed(0)
    method, _ = small_method(name, *overrides)
    method.train()
    loss = method.training_loss(multicrop_views())
    assert torch.isfinite(loss)
    loss.backward()
    targets = [n for n, _ in method.named_parameters(remove_duplicate=False) if "_target." in n]
    assert targets
    for param_name, param in method.named_parameters():
        if "_target." in param_name:
            assert not param.requires_grad and param.grad is None, param_name
    assert method.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.backbone.cls_token.grad.abs().sum() > 0
    if name == "ibot":
        assert method.student_vit.mask_token.grad.abs().sum() > 0  # the patch loss reaches it
        if "method.shared_head=false" in overrides:
            assert method.patch_head.layers[0].weight.grad.abs().sum() > 0
    else:
        assert method.prototypes.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ibot", "msn"])
def test_the_online_probe_sees_the_first_view_unmasked(name: str) -> None:
    torch.manual_seed(0)
    method, _ = small_method(name)
    method.keep_online_features = True  # as sslbench.eval.online_probe sets it
    views = multicrop_views(8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        method.loss_of_views(views)
        unmasked = method.backbone(views.global_views[0])
    torch.testing.assert_close(method.online_features, unmasked)


# -- MSN ---------------------------------------------------------------------------------------
def test_msn_drops_the_anchors_tokens_and_keeps_the_class_token() -> None:
    method, _ = small_method("msn", "method.mask_ratio=0.5")
    views = multicrop_views(4)
    keeps = method.keep_indices([views.global_views[1], views.local_views[0]], generator(0))
    # 16 patches (32 px) keep 8, 4 patches (16 px) keep 2; token 0 (the class token) first
    assert [k.shape for k in keeps] == [(4, 9), (4, 3)]
    assert all(bool((k[:, 0] == 0).all()) and bool((k[:, 1:] >= 1).all()) for k in keeps)
    tokens = method.anchor_vit.encode(views.global_views[1], idx_keep=keeps[0])
    assert tokens.shape == (4, 9, method.feature_dim)


@pytest.mark.parametrize(("prior", "loss_class"), [("uniform", MSNLoss), ("power_law", PMSNLoss)])
def test_msns_prior_chooses_me_max_or_pmsns_power_law(prior: str, loss_class) -> None:
    method, _ = small_method("msn", f"method.prior={prior}", "method.power_law_exponent=0.5")
    assert type(method.criterion) is loss_class
    if prior == "power_law":
        assert method.criterion.power_law_exponent == 0.5


def test_an_unknown_prior_is_one_line_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        small_method("msn", "method.prior=zipf")
    assert str(err.value) == "unknown method.prior 'zipf'; valid: uniform, power_law"


def test_msns_prototypes_join_the_undecayed_group() -> None:
    method, _ = small_method("msn")
    groups = configured_optimizers(method, steps=10, epochs=1)["optimizer"].param_groups
    assert groups[0]["weight_decay"] > 0 and groups[1]["weight_decay"] == 0.0
    assert not any(p is method.prototypes for p in groups[0]["params"])
    assert any(p is method.prototypes for p in groups[1]["params"])


# -- runs through the command line -------------------------------------------------------------
@pytest.mark.parametrize("name", ["ibot", "msn"])
def test_on_a_resnet_it_exits_2_with_one_line_and_no_run_folder(name: str, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["pretrain", f"method={name}", *TINY_RUN, f"run_dir={run_dir}"]) == 2
    err = one_line_error(capsys)
    assert f"method={name} trains a VIT" in err and "backbone=resnet10t is a CNN" in err
    assert not run_dir.exists()
