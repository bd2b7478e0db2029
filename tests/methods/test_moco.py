"""MoCo v2 and v3: v2's memory bank (the last keys, in ring order, the loss against it),
keys without gradient, the symmetric option and batch shuffling; v3's loss against a hand
computation, its heads, its symmetric sum and its momentum schedule.

The methods are built with their classes' small_overrides (narrow heads, resnet10t at 32 px)
and stepped on fixed random views without a Trainer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_method, configured_optimizers, correlated_views, small_method
from omegaconf import OmegaConf
from torch import Tensor

from sslbench.errors import ConfigError
from sslbench.methods import Views
from sslbench.methods.banks import check_bank_sizes
from sslbench.methods.mocov2 import MoCoV2
from sslbench.methods.mocov3 import MoCoV3
from sslbench.nn.losses import MoCoV3Loss

N = 16  # images per view


def _views(seed: int = 0) -> Views:
    return correlated_views(N, seed)


class _Spy:
    """Wraps a criterion and records each call's (query, key) and the bank before it."""

    def __init__(self, criterion: torch.nn.Module) -> None:
        self.criterion = criterion
        self.calls: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def __call__(self, q: Tensor, k: Tensor) -> Tensor:
        bank = getattr(self.criterion, "memory_bank", None)
        self.calls.append((q, k, None if bank is None else bank.bank.detach().clone()))
        return self.criterion(q, k)


def _spied(method) -> _Spy:
    spy = _Spy(method.criterion)
    # An instance attribute shadows the registered submodule for the method's calls only.
    object.__setattr__(method, "criterion", spy)
    return spy


def _infonce_with_bank(q: Tensor, k: Tensor, bank: Tensor, temperature: float) -> Tensor:
    """MoCo's loss by hand: row i's positive normalize(k_i), negatives the bank's rows."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positives = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positives, q @ bank.T], dim=1) / temperature
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()


# -- MoCo v2 ---------------------------------------------------------------------------------
def test_mocov2_defaults_are_lightlys_benchmark() -> None:
    method, cfg = build_method("method=mocov2")
    assert isinstance(method, MoCoV2) and method.symmetric
    assert method.criterion.temperature == 0.1 and method.criterion.gather_distributed
    assert tuple(method.criterion.memory_bank.bank.shape) == (4096, 128)
    assert method.criterion.memory_bank.gather_distributed  # the bank gets the global batch
    linears = [m for m in method.projection_head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 128)]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in method.projection_head.modules())
    assert method.momentum_at(0, 100) == method.momentum_at(99, 100) == 0.99
    opt = cfg.method.optimizer
    assert (opt.name, opt.lr, opt.reference_batch_size, opt.weight_decay) == (
        "sgd", 0.06, 256, 5e-4,
    )  # fmt: skip
    assert opt.warmup_epochs == 0.0 and not opt.exclude_bias_and_norm
    assert MoCoV2.bank_keys == ("memory_bank_size",)


def test_mocov2_bank_larger_than_the_training_set_is_refused() -> None:
    cfg = OmegaConf.create({"method": {"memory_bank_size": 4096}, "batch_size": 64})
    with pytest.raises(ConfigError, match="memory_bank_size=256"):
        check_bank_sizes(cfg, MoCoV2.bank_keys, 256)
    small = OmegaConf.create({"method": {"memory_bank_size": 128}, "batch_size": 64})
    check_bank_sizes(small, MoCoV2.bank_keys, 128)  # the tiny runs' bank fits


def test_mocov2_bank_holds_the_last_keys_in_ring_order() -> None:
    torch.manual_seed(0)
    method, _ = small_method("mocov2", f"method.memory_bank_size={3 * N}")
    method.train()
    spy = _spied(method)
    bank = spy.criterion.memory_bank
    method.training_loss(_views(0))
    (_, k1a, _), (_, k0a, _) = spy.calls  # L(q0, k1) enqueues k1 first, then L(q1, k0)
    assert int(bank.bank_ptr) == 2 * N  # 2N keys per step
    torch.testing.assert_close(bank.bank[:N], F.normalize(k1a, dim=1))
    torch.testing.assert_close(bank.bank[N : 2 * N], F.normalize(k0a, dim=1))
    method.training_loss(_views(1))
    (_, k1b, _), (_, k0b, _) = spy.calls[2:]
    # The ring wraps: k1b fills the last N rows, k0b overwrites the oldest (k1a).
    assert int(bank.bank_ptr) == N
    expected = torch.cat([k0b, k0a, k1b])
    torch.testing.assert_close(bank.bank, F.normalize(expected, dim=1))


def test_mocov2_loss_is_infonce_against_the_bank_and_keys_get_no_gradient() -> None:
    torch.manual_seed(0)
    method, _ = small_method("mocov2")
    method.train()
    spy = _spied(method)
    method.training_loss(_views(0))  # fill part of the bank with real keys
    spy.calls.clear()
    loss = method.training_loss(_views(1))
    (q0, k1, bank_a), (q1, k0, bank_b) = spy.calls
    assert q0.requires_grad and q1.requires_grad
    assert not k0.requires_grad and not k1.requires_grad
    # The second call sees the bank after the first call's keys went in.
    torch.testing.assert_close(bank_b[2 * N : 3 * N], F.normalize(k1, dim=1))
    tau = method.method_cfg["temperature"]
    expected = 0.5 * (
        _infonce_with_bank(q0, k1, bank_a, tau) + _infonce_with_bank(q1, k0, bank_b, tau)
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in method.backbone_target.parameters())
    assert all(p.grad is None for p in method.projection_head_target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())


def test_mocov2_asymmetric_option_is_the_papers_one_direction() -> None:
    torch.manual_seed(0)
    method, _ = small_method("mocov2", "method.symmetric=false")
    assert not method.symmetric
    method.train()
    spy = _spied(method)
    loss = method.training_loss(_views(0))
    ((q0, k1, bank),) = spy.calls  # one call: queries of view 0, keys of view 1
    assert int(spy.criterion.memory_bank.bank_ptr) == N  # N keys per step
    views = _views(0)
    with torch.no_grad():
        torch.testing.assert_close(
            q0, method.projection_head(method.backbone(views.global_views[0]))
        )
        key = method.projection_head_target(method.backbone_target(views.global_views[1]))
    torch.testing.assert_close(k1, key, rtol=1e-4, atol=1e-5)
    tau = method.method_cfg["temperature"]
    torch.testing.assert_close(loss, _infonce_with_bank(q0, k1, bank, tau))


def test_mocov2_symmetric_and_asymmetric_losses_differ() -> None:
    losses = []
    for symmetric in ("true", "false"):
        torch.manual_seed(0)
        method, _ = small_method("mocov2", f"method.symmetric={symmetric}")
        method.train()
        with torch.no_grad():  # no gradient: the bank is left as it is
            losses.append(float(method.training_loss(_views(0))))
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


def test_mocov2_keys_of_one_process_skip_a_shuffle_that_changes_nothing(monkeypatch) -> None:
    """Shuffle BN matters across processes only: one process's batch norm does not see the
    order, so its keys skip the shuffle (which would also draw from the global random
    stream that a resumed run does not restore)."""
    import sslbench.methods.mocov2 as module

    torch.manual_seed(0)
    method, _ = small_method("mocov2")
    method.train()
    x = _views(0).global_views[1]
    calls: list[int] = []
    monkeypatch.setattr(module, "batch_shuffle", lambda *args, **kwargs: calls.append(1))
    with torch.no_grad():
        keys = method.keys(x)
        plain = method.projection_head_target(method.backbone_target(x))
    assert not calls and torch.equal(keys, plain)
    monkeypatch.undo()
    shuffled, order = module.batch_shuffle(x)  # lightly's one-process shuffle
    with torch.no_grad():
        unshuffled = module.batch_unshuffle(
            method.projection_head_target(method.backbone_target(shuffled)), order
        )
    assert not torch.equal(order, torch.arange(N))
    # the same keys, up to the float rounding of sums in another order
    torch.testing.assert_close(unshuffled, plain, rtol=1e-4, atol=1e-5)


def test_mocov2_bank_is_saved_in_checkpoints() -> None:
    torch.manual_seed(0)
    method, _ = small_method("mocov2")
    method.train()
    method.training_loss(_views(0))
    checkpoint: dict = {}
    method.on_save_checkpoint(checkpoint)
    saved = checkpoint["sslbench_extra_state"]
    assert int(saved["criterion.memory_bank.bank_ptr"]) == 2 * N
    fresh, _ = small_method("mocov2")
    fresh.on_load_checkpoint(checkpoint)
    assert torch.equal(fresh.criterion.memory_bank.bank, method.criterion.memory_bank.bank)


# -- MoCo v3 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_mocov3_loss_is_the_hand_computation(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
    loss = MoCoV3Loss(temperature=temperature)(q, k)
    # CE of normalize(q) @ normalize(k).T / tau with the diagonal as labels, times 2 tau
    qn = q / q.norm(dim=1, keepdim=True)
    kn = k / k.norm(dim=1, keepdim=True)
    expected = 0.0
    for i in range(8):
        logits = [float(qn[i] @ kn[j]) / temperature for j in range(8)]
        expected -= logits[i] - math.log(sum(math.exp(v) for v in logits))
    expected = expected / 8 * 2 * temperature
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # Orthogonal keys, each query on its own key: 2 tau log(1 + 7 exp(-1 / tau)).
    aligned = MoCoV3Loss(temperature)(torch.eye(8), torch.eye(8))
    expected_aligned = 2 * temperature * math.log(1 + 7 * math.exp(-1 / temperature))
    assert float(aligned) == pytest.approx(expected_aligned, rel=1e-5)
    # Only directions count: scaled keys give the same loss.
    torch.testing.assert_close(MoCoV3Loss(temperature)(q, 3 * k), loss)
    with pytest.raises(ValueError, match="differ in shape"):
        MoCoV3Loss()(q, k[:4])


def test_mocov3_defaults_are_the_official_resnet_code() -> None:
    method, cfg = build_method("method=mocov3")
    assert isinstance(method, MoCoV3)
    assert method.criterion.temperature == 1.0 and method.criterion.gather_distributed
    projector = list(method.projection_head.layers)
    linears = [m for m in projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 4096), (4096, 256)]
    assert all(m.bias is None for m in method.projection_head.modules()
               if isinstance(m, torch.nn.Linear))  # fmt: skip
    last = projector[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine  # SimCLR-style last BN
    assert isinstance(projector[1], torch.nn.BatchNorm1d) and projector[1].affine
    predictor = list(method.prediction_head.layers)
    assert isinstance(predictor[-1], torch.nn.Linear) and predictor[-1].bias is None
    assert (predictor[0].in_features, predictor[0].out_features) == (256, 4096)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in predictor) == 1
    opt = cfg.method.optimizer
    assert (opt.name, opt.lr, opt.weight_decay, opt.warmup_epochs) == ("lars", 0.6, 1e-6, 10.0)
    assert opt.exclude_bias_and_norm and opt.reference_batch_size == 256
    with pytest.raises(ValueError, match="num_layers"):
        build_method("method=mocov3", "method.num_layers=1")
    three, _ = small_method("mocov3", "method.num_layers=3")  # the paper's text / ViT code
    assert sum(isinstance(m, torch.nn.Linear) for m in three.projection_head.modules()) == 3


def test_mocov3_momentum_rises_to_one_by_a_half_cosine() -> None:
    method, _ = small_method("mocov3")
    total = 101
    assert method.momentum_at(0, total) == pytest.approx(0.99)
    assert method.momentum_at(50, total) == pytest.approx(0.995)
    assert method.momentum_at(total - 1, total) == pytest.approx(1.0)
    # official code: m = 1 - 0.5 * (1 + cos(pi * t / T)) * (1 - 0.99)
    for step in (10, 37, 80):
        official = 1 - 0.5 * (1 + math.cos(math.pi * step / (total - 1))) * 0.01
        assert method.momentum_at(step, total) == pytest.approx(official)


def test_mocov3_loss_sums_both_directions_with_momentum_keys() -> None:
    torch.manual_seed(0)
    method, _ = small_method("mocov3")
    method.train()
    spy = _spied(method)
    views = _views(0)
    loss = method.training_loss(views)
    (q0, k1, _), (q1, k0, _) = spy.calls
    assert q0.requires_grad and q1.requires_grad
    assert not k0.requires_grad and not k1.requires_grad
    x0, x1 = views.global_views
    with torch.no_grad():
        torch.testing.assert_close(
            q1, method.prediction_head(method.projection_head(method.backbone(x1)))
        )
        k = method.projection_head_target(method.backbone_target(x0))
    torch.testing.assert_close(k0, k)
    criterion = spy.criterion
    torch.testing.assert_close(loss, criterion(q0, k1) + criterion(q1, k0))
    # Symmetric in the views: swapping them gives the same sum.
    swapped = method.training_loss(Views(global_views=[x1, x0], local_views=[]))
    torch.testing.assert_close(swapped, loss)
    loss.backward()
    assert all(p.grad is None for p in method.backbone_target.parameters())
    assert all(p.grad is None for p in method.projection_head_target.parameters())
    assert all(p.grad is not None for p in method.prediction_head.parameters())


def test_mocov3_lars_excludes_biases_and_norms_and_warms_up() -> None:
    from sslbench.nn.optim import LARS

    method, _ = build_method("method=mocov3", "batch_size=512")
    configured = configured_optimizers(method, 100, 50)
    optimizer = configured["optimizer"]
    assert isinstance(optimizer, LARS)
    weights, flat = optimizer.param_groups
    # 0.6 * 512 / 256 = 1.2, warmed up over 10 epochs of 2 steps: 1/20 of it at step 0
    assert configured["lr_scheduler"]["scheduler"].base_lrs == pytest.approx([1.2, 1.2])
    assert weights["lr"] == pytest.approx(1.2 / 20)
    assert weights["weight_decay"] == 1e-6 and flat["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in flat["params"])
    # the momentum encoder is not optimised
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in method.backbone_target.parameters())
