"""I-JEPA and LeJEPA: I-JEPA's multi-block masks, which parts its loss trains, its refusal
of a ResNet; LeJEPA's two terms (SIGReg tells Gaussian embeddings from collapsed ones, with
the same random directions on every process; λ = 0 leaves the prediction term alone); a tiny
real run of each."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_RUN, correlated_views, needs_fmnist, one_line_error, small_method

from sslbench.cli import main
from sslbench.methods import Views

VIT = ("backbone=vit_tiny_patch16_224", "backbone.patch_size=8")


def _at_step(method, step: int) -> None:
    """Make ``method`` see optimiser step ``step`` (its mask and direction generators read
    the step from the Trainer)."""
    method._trainer = SimpleNamespace(global_step=step, current_epoch=0, global_rank=0)


# -- I-JEPA ------------------------------------------------------------------------------------
def _ijepa_masks(step: int, *overrides: str):
    """(context (N, Kc), targets 4 x (N, Kt), T) of a 12 x 12 patch grid at ``step``."""
    method, _ = small_method("ijepa", "image_size=96", *overrides)
    _at_step(method, step)
    context, targets = method.masks(16)
    return context, targets, method.grid[0] * method.grid[1]


def test_ijepa_masks_are_blocks_in_the_grid_with_equal_counts_and_a_disjoint_context() -> None:
    context, targets, tokens = _ijepa_masks(3, "method.min_keep=1")
    assert len(targets) == 4
    assert all(t.shape == targets[0].shape for t in targets)  # one count for all blocks
    assert context.shape[0] == 16 and context.shape[1] >= 1
    side = math.isqrt(tokens)
    for target in targets:
        assert target.min() >= 0 and target.max() < tokens
        for row in target:  # a block: its patches lie in one small rectangle, not scattered
            assert row.unique().numel() == row.numel()
            rows, cols = row // side, row % side
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box <= 2 * 0.2 * tokens, (row, box)
    for i in range(16):
        taken = set(torch.cat([t[i] for t in targets]).tolist())
        assert not taken & set(context[i].tolist())  # the targets are out of the context
    # A context that would keep fewer than min_keep patches keeps its whole block instead.
    context, targets, _ = _ijepa_masks(3, f"method.min_keep={tokens + 1}")
    overlap = [
        bool(set(context[i].tolist()) & set(torch.cat([t[i] for t in targets]).tolist()))
        for i in range(16)
    ]
    assert any(overlap)


def test_ijepa_masks_repeat_at_the_same_step_and_change_at_another() -> None:
    first, first_targets, _ = _ijepa_masks(5)
    again, again_targets, _ = _ijepa_masks(5)
    other, other_targets, _ = _ijepa_masks(6)
    assert torch.equal(first, again)
    assert all(torch.equal(a, b) for a, b in zip(first_targets, again_targets, strict=True))
    changed = first.shape != other.shape or not torch.equal(first, other)
    assert changed or not torch.equal(first_targets[0], other_targets[0])


def test_ijepa_trains_context_encoder_and_predictor_not_the_target_encoder() -> None:
    torch.manual_seed(0)
    method, _ = small_method("ijepa")
    method.train()
    loss = method.training_loss(correlated_views(8))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    # the EMA target, the fixed sine-cosine position embeddings, the unused mask token
    target = {n for n in frozen if n.startswith("backbone_target.")}
    fixed = {"backbone.pos_embed", "predictor.decoder.pos_embed", "context_encoder.mask_token"}
    assert frozen - target == fixed
    assert all(p.grad is None for p in method.backbone_target.parameters())
    for module in (method.predictor, method.backbone):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_ijepa_loss_switches_to_the_papers_l2() -> None:
    torch.manual_seed(0)
    method, _ = small_method("ijepa", "method.loss=mse")
    pred, target = torch.randn(8, 5, 192), 3 * torch.randn(8, 5, 192)
    expected = F.mse_loss(pred, F.layer_norm(target, (192,)))
    torch.testing.assert_close(method._loss(pred, target), expected)
    method, _ = small_method("ijepa")
    assert float(method._loss(pred, target)) < float(expected)  # smooth L1 is below L2 here


@needs_fmnist
def test_ijepa_refuses_a_resnet_before_making_the_run_folder(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["pretrain", "method=ijepa", *TINY_RUN, f"run_dir={run_dir}"]) == 2
    assert "vit" in one_line_error(capsys).lower()
    assert not run_dir.exists()


# -- LeJEPA ------------------------------------------------------------------------------------
def _lejepa(*overrides: str):
    torch.manual_seed(0)
    method, _ = small_method("lejepa", *overrides)
    method.train()
    return method


def _multicrop_views(n: int = 32) -> Views:
    """Two correlated global views (n, 3, 32, 32) and two local views (n, 3, 14, 14)."""
    views = correlated_views(n)
    x0, x1 = views.global_views
    views.local_views = [F.interpolate(x, size=14, mode="bilinear") for x in (x0, x1)]
    return views


def test_sigreg_is_larger_for_collapsed_than_for_gaussian_embeddings() -> None:
    method = _lejepa()
    generator = torch.Generator().manual_seed(0)
    gaussian = torch.randn(2, 256, 16, generator=generator)
    collapsed = gaussian[:, :1].expand(-1, 256, -1)  # every image the same embedding
    low_rank = gaussian[..., :1].expand(-1, -1, 16)  # all on one line
    sigreg = float(method._sigreg(gaussian))
    assert sigreg < 0.1 * float(method._sigreg(collapsed))
    assert sigreg < 0.5 * float(method._sigreg(low_rank))
    assert sigreg < 0.5 * float(method._sigreg(3.0 * gaussian))  # isotropic, but too wide


def test_sigreg_directions_follow_the_step_not_the_global_random_state() -> None:
    method = _lejepa()
    embeddings = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(1))
    _at_step(method, 7)
    torch.manual_seed(123)
    first = method._sigreg(embeddings)
    torch.manual_seed(456)  # another process's global random state
    assert torch.equal(method._sigreg(embeddings), first)
    _at_step(method, 8)
    assert not torch.equal(method._sigreg(embeddings), first)


def test_lambda_zero_leaves_the_prediction_term_zero_for_identical_views() -> None:
    method = _lejepa("method.lambda_param=0")
    views = _multicrop_views()
    projections = [
        method.projection_head(method.backbone(x))
        for x in (*views.global_views, *views.local_views)
    ]
    stacked = torch.stack(projections)
    centre = stacked[:2].mean(dim=0)
    expected = (stacked - centre).square().mean()
    torch.testing.assert_close(method.training_loss(views), expected)
    # identical views: the prediction term's minimum, 0, whatever SIGReg says
    same = Views(global_views=[views.global_views[0]] * 2, local_views=[])
    with torch.no_grad():
        assert float(method.training_loss(same)) == pytest.approx(0.0, abs=1e-10)
        assert float(_lejepa("method.lambda_param=1").training_loss(same)) > 0.1


def test_lejepa_steps_on_fixed_views_lower_the_loss_and_reach_the_backbone() -> None:
    method = _lejepa()
    views = _multicrop_views(16)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(method.training_loss(views))
    for step in range(3):
        optimizer.zero_grad()
        loss = method.training_loss(views)
        loss.backward()
        if step == 0:
            grads = [p.grad for p in method.backbone.parameters()]
            assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads)
        optimizer.step()
    with torch.no_grad():
        assert float(method.training_loss(views)) < before


def test_lejepa_on_a_vit_takes_the_vit_weight_decay_and_trains_multi_crop() -> None:
    assert _lejepa().method_cfg["optimizer"]["weight_decay"] == 5.0e-4  # ResNets'
    method = _lejepa(*VIT)
    assert method.method_cfg["optimizer"]["weight_decay"] == 0.05
    views = correlated_views(8)
    views.local_views = [torch.randn(8, 3, 16, 16) for _ in range(2)]  # 2 x 2 patches
    method.training_loss(views).backward()
    assert method.backbone.patch_embed.proj.weight.grad is not None


# -- tiny real runs ----------------------------------------------------------------------------
@needs_fmnist
@pytest.mark.parametrize(("name", "backbone"), [("lejepa", ())], ids=["lejepa"])
def test_tiny_jepa_run_completes(name: str, backbone: tuple[str, ...], tmp_path) -> None:
    # on a ResNet (a ViT step is test_lejepa_on_a_vit_...); I-JEPA's tiny run is in
    # tests/methods/test_vit_runs.py
    run_dir = tmp_path / "run"
    assert main(["pretrain", f"method={name}", *TINY_RUN, *backbone, f"run_dir={run_dir}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["method"] == name
    for key in ("linear_top1", "knn_top1"):
        assert 0.0 <= results[key] <= 1.0
