"""SMoG: its loss against a hand computation on small tensors (the group features moved by
the batch, the target's assignments), the views swapped on odd steps, the bank holding the
last online projections, and the periodic reset: group features to the bank's k-means
centres and the target to an exact copy of the online network, EMA steps in between. Also
its configuration (lightly's benchmark), its checkpoint state and lightly's SMoGTransform at
the run's pipeline.

The methods are built with SMoG's small_overrides (narrow heads, 8 groups, a bank of 64, a
reset every 3 steps) and stepped on fixed random views without a Trainer; the step number
is set by patching ``global_step``. The registry-driven tests (test_methods_*.py and
tests/run/test_resume_methods.py) run it in whole runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build_method, configured_optimizers, correlated_views, small_method

from sslbench.config import compose
from sslbench.errors import ConfigError
from sslbench.methods import Views
from sslbench.methods.base import EXTRA_STATE_KEY
from sslbench.methods.smog import KMEANS_STREAM, SMoG
from sslbench.nn.kmeans import kmeans
from sslbench.tools.lightly_views import smog_transform
from sslbench.transforms.pipeline import stream_seed

N = 16  # images per view


def _views(seed: int = 0) -> Views:
    return correlated_views(N, seed)


def _at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make every SMoG's ``global_step`` (the Trainer's, 0 without one) read ``step``."""
    monkeypatch.setattr(SMoG, "global_step", property(lambda self: step))


def _smog(*overrides: str) -> SMoG:
    torch.manual_seed(0)
    method, _ = small_method("smog", *overrides)
    assert isinstance(method, SMoG)
    method.train()
    return method


def _record_grouping(method: SMoG) -> list[tuple[torch.Tensor, ...]]:
    """Every later grouping_loss call's (z0, p0, t1) and the group features it started from."""
    calls: list[tuple[torch.Tensor, ...]] = []
    grouping_loss = method.grouping_loss

    def record(z0: torch.Tensor, p0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        calls.append((z0, p0, t1, method.groups.group_features.detach().clone()))
        return grouping_loss(z0, p0, t1)

    object.__setattr__(method, "grouping_loss", record)
    return calls


# -- configuration ---------------------------------------------------------------------------
def test_smog_defaults_are_lightlys_benchmark() -> None:
    method, cfg = build_method("method=smog")
    assert isinstance(method, SMoG)
    linears = [m for m in method.projection_head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 128)]
    linears = [m for m in method.prediction_head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 2048), (2048, 128)]
    assert tuple(method.groups.group_features.shape) == (300, 128)
    assert method.groups.beta == 0.99 and method.temperature == 0.1
    assert tuple(method.memory_bank.bank.shape) == (8192, 128)
    assert method.memory_bank.gather_distributed  # the bank gets the global batch
    assert method.reset_every == 300 and not method.reset_due(0) and method.reset_due(600)
    assert method.momentum_at(0, 100) == method.momentum_at(99, 100) == 0.99
    opt = cfg.method.optimizer
    assert (opt.name, opt.lr, opt.reference_batch_size, opt.momentum, opt.weight_decay) == (
        "sgd", 0.01, None, 0.9, 1e-6,
    )  # fmt: skip
    assert SMoG.bank_keys == ("memory_bank_size",)
    # the group features: state of the method (a buffer), in the state_dict, never optimised
    assert "groups.group_features" in method.state_dict()
    assert "groups.group_features" in dict(method.named_buffers())
    optimizer = configured_optimizers(method, 10, 1)["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(method.groups.group_features) not in optimised
    assert id(next(method.backbone_target.parameters())) not in optimised


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.memory_bank_size=4"], "memory_bank_size=4 is smaller than method.n_groups=8"),
        (["method.joint_forward=true"], "joint_forward=true does not apply to SMoG"),
        (["method.reset_every_n_steps=-1"], "reset_every_n_steps must be 0"),
    ],
)
def test_settings_smog_cannot_run_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_method("smog", *overrides)


# -- the loss ----------------------------------------------------------------------------------
def test_loss_is_cross_entropy_of_moved_groups_against_the_targets_assignments() -> None:
    method = _smog("method.output_dim=2", "method.n_groups=3")
    method.groups.beta = 0.5
    groups = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    method.groups.set_group_features(groups.clone())
    # z0's groups (by cosine with the groups before the step): 0, 1, 0, 2
    z0 = torch.tensor([[2.0, 0.2], [0.1, 3.0], [1.5, -0.1], [-1.0, 0.5]], requires_grad=True)
    # t1's groups: 0, 1, 2, 0 (the last: cosines 0.45, -0.89, -0.45)
    t1 = torch.tensor([[0.9, 0.1], [0.2, 1.0], [-0.5, -0.1], [0.1, -0.2]])
    p0 = torch.tensor([[1.0, 1.0], [0.0, 2.0], [-1.0, 0.3], [0.5, -2.0]])
    # by hand: g'_k = 0.5 g_k + 0.5 mean of z0 in group k
    moved = torch.tensor([[1.375, 0.025], [0.05, 2.0], [-1.0, 0.25]])
    logits = F.normalize(p0, dim=1) @ F.normalize(moved, dim=1).T / 0.1
    expected = -logits.log_softmax(dim=1)[torch.arange(4), torch.tensor([0, 1, 2, 0])].mean()
    loss = method.grouping_loss(z0, p0, t1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(method.groups.group_features.data, moved)  # G <- G'
    assert not method.groups.group_features.requires_grad
    # lightly's moved groups keep z0's graph: the loss reaches z0 through them (weight 1 - β)
    loss.backward()
    assert z0.grad is not None and float(z0.grad.abs().sum()) > 0


def test_views_are_swapped_on_odd_steps(monkeypatch) -> None:
    method = _smog()
    views = _views()
    online, target = [], []
    features, backbone_target = method.features, method.backbone_target.forward
    object.__setattr__(method, "features", lambda x: (online.append(x), features(x))[1])
    object.__setattr__(
        method.backbone_target, "forward", lambda x: (target.append(x), backbone_target(x))[1]
    )
    for step in (0, 1, 2):  # no reset among them (every 3 steps)
        _at_step(monkeypatch, step)
        method.training_loss(views)
    x0, x1 = views.global_views
    assert [v is x0 for v in online] == [True, False, True]
    assert [v is x1 for v in target] == [True, False, True]
    assert online[1] is x1 and target[1] is x0


def test_bank_holds_the_last_online_projections() -> None:
    method = _smog()
    calls = _record_grouping(method)
    bank = method.memory_bank
    method.training_loss(_views(0))
    method.training_loss(_views(1))
    (z_a, *_), (z_b, *_) = calls
    assert int(bank.bank_ptr) == 2 * N
    torch.testing.assert_close(bank.bank[:N], z_a.detach())  # z0 as it is: not normalised
    torch.testing.assert_close(bank.bank[N : 2 * N], z_b.detach())
    assert z_a.requires_grad  # the online projection, not the target's


def test_group_features_move_every_step_towards_the_batch() -> None:
    method = _smog()
    before = method.groups.group_features.detach().clone()
    calls = _record_grouping(method)
    method.training_loss(_views(0))
    ((z0, *_),) = calls
    after = method.groups.group_features.detach()
    assigned = torch.argmax(F.normalize(z0.detach(), dim=1) @ F.normalize(before, dim=1).T, 1)
    for k in range(len(before)):  # moved where a projection was assigned, left elsewhere
        mask = assigned == k
        expected = before[k] if not mask.any() else 0.99 * before[k] + 0.01 * z0[mask].mean(0)
        torch.testing.assert_close(after[k], expected.detach())


# -- the reset -------------------------------------------------------------------------------
def _clustered_bank(method: SMoG) -> torch.Tensor:
    """Fill the bank (64, 32) with 8 tight clusters around random directions; return them."""
    generator = torch.Generator().manual_seed(1)
    directions = F.normalize(torch.randn(8, 32, generator=generator), dim=1)
    entries = directions.repeat_interleave(8, dim=0) * 5
    method.memory_bank.bank.copy_(entries + 0.05 * torch.randn(64, 32, generator=generator))
    return directions


def test_reset_step_replaces_the_groups_by_the_banks_kmeans_centres(monkeypatch) -> None:
    method = _smog()
    resets: list[int] = []
    reset_groups = method.reset_groups

    def record(step: int) -> None:
        resets.append(step)
        reset_groups(step)

    object.__setattr__(method, "reset_groups", record)
    calls = _record_grouping(method)
    _at_step(monkeypatch, 2)
    method.training_loss(_views(2))
    assert resets == []  # not a reset step
    directions = _clustered_bank(method)
    bank = method.memory_bank.bank.clone()
    _at_step(monkeypatch, 3)
    method.training_loss(_views(3))
    assert resets == [3]
    # the step's groups, before its batch moved them: the bank's k-means centres, unit length
    used = calls[-1][3]
    centres = kmeans(bank, 8, seed=stream_seed(method.seed, KMEANS_STREAM, 3)).centres
    torch.testing.assert_close(used, F.normalize(centres, dim=1))
    cosine = used @ directions.T
    assert float(cosine.max(dim=0).values.min()) > 0.99  # one group per cluster
    assert not torch.allclose(used, calls[0][3])


def test_reset_is_the_same_for_the_same_bank_and_step() -> None:
    method = _smog()
    _clustered_bank(method)
    method.reset_groups(3)
    first = method.groups.group_features.detach().clone()
    method.groups.set_group_features(torch.zeros_like(first))
    method.reset_groups(3)  # another process, holding the same bank at the same step
    assert torch.equal(method.groups.group_features.data, first)


def test_target_is_an_ema_between_resets_and_a_copy_at_them(monkeypatch) -> None:
    method = _smog()
    with torch.no_grad():  # the online network moved away from its target
        for p in [*method.backbone.parameters(), *method.projection_head.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
        for m in method.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(1.0)
    online = [*method.backbone.parameters(), *method.projection_head.parameters()]
    target = [*method.backbone_target.parameters(), *method.projection_head_target.parameters()]
    old = [t.detach().clone() for t in target]
    _at_step(monkeypatch, 2)
    method.update_target(0.99)
    for o, t, t_old in zip(online, target, old, strict=True):
        torch.testing.assert_close(t, 0.99 * t_old + 0.01 * o)
    assert not all(torch.equal(o, t) for o, t in zip(online, target, strict=True))
    _at_step(monkeypatch, 3)
    method.update_target(0.99)
    assert all(torch.equal(o, t) for o, t in zip(online, target, strict=True))
    buffers = zip(method.backbone.buffers(), method.backbone_target.buffers(), strict=True)
    assert all(torch.equal(o, t) for o, t in buffers)  # batch norm's statistics too
    assert all(not t.requires_grad for t in target)


def test_checkpoint_holds_groups_bank_and_target() -> None:
    method = _smog()
    method.training_loss(_views(0))
    checkpoint: dict = {"state_dict": {k: v.clone() for k, v in method.state_dict().items()}}
    method.on_save_checkpoint(checkpoint)
    saved = checkpoint[EXTRA_STATE_KEY]
    assert torch.equal(saved["memory_bank.bank"], method.memory_bank.bank)
    assert int(saved["memory_bank.bank_ptr"]) == N
    groups = checkpoint["state_dict"]["groups.group_features"]
    bank = method.memory_bank.bank.clone()
    method.training_loss(_views(1))  # the run goes on: groups and bank move
    assert not torch.equal(method.groups.group_features, groups)
    method.on_load_checkpoint(checkpoint)  # as Lightning restores: extra state, state_dict
    method.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(method.groups.group_features, groups)
    assert torch.equal(method.memory_bank.bank, bank) and int(method.memory_bank.bank_ptr) == N


# -- lightly's transform ---------------------------------------------------------------------
def test_lightly_smog_transform_takes_each_views_blur_and_solarisation() -> None:
    cfg = compose([
        "method=smog", "transform=byol", "image_size=64", "transform.ops.gaussian_blur.p=0.5",
        "transform.ops.color_jitter.p=1.0", "transform.ops.resized_crop.scale=[0.2,1.0]",
    ])  # fmt: skip
    transform = smog_transform(cfg)
    assert len(transform.transforms) == 2  # two global views, no local crops
    for view, (blur, solarize) in zip(transform.transforms, [(0.5, 0.0), (0.1, 0.2)], strict=True):
        ops = {type(op).__name__: op for op in view.transform.transforms}
        assert ops["GaussianBlur"].prob == blur
        assert ops["RandomSolarization"].prob == solarize
        crop = ops["RandomResizedCrop"]
        assert tuple(crop.scale) == (0.2, 1.0) and tuple(crop.size) == (64, 64)
        assert ops["RandomApply"].p == 1.0
    with pytest.raises(ValueError, match="SMoG's views are byol's, not pipeline 'simclr'"):
        smog_transform(compose(["method=smog", "transform=simclr"]))
