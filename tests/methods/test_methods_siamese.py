"""SimSiam, BYOL, Barlow Twins and VICReg on real Fashion-MNIST images: they learn on fixed
views, gradients reach the backbone and skip the frozen parts, BYOL's target is the EMA of
its online network at the scheduled momentum, and a tiny real run of each completes."""

from __future__ import annotations

import json
import math
import sys
import warnings

import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    TINY_RUN,
    build_method,
    configured_optimizers,
    method_names,
    needs_fmnist,
    small_method,
)
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from sslbench.cli import main
from sslbench.config import compose
from sslbench.methods import Views, method_class
from sslbench.methods.banks import bank_state, load_bank_state
from sslbench.methods.base import effective_rank
from sslbench.methods.ema import EMATargetMethod
from sslbench.transforms import Pipeline, make_generator

#: The two-view methods (no local views): every one learns on the same two fixed views.
#: Their unit tests use each class's small_overrides (narrow heads: the defaults' 2048-4096-
#: wide layers would dominate on a CPU); the tiny runs at the end train the default sizes.
TWO_VIEW = method_names(local_views=False)


#: Parameters a method keeps fixed by design, besides its EMA targets: MAE's sin-cos position
#: embeddings (encoder and decoder, the paper's) and its encoder's mask token, which MAE never
#: uses (its encoder drops the masked patches).
FIXED = {"mae": {"backbone.pos_embed", "encoder.mask_token", "decoder.pos_embed"}}


@pytest.fixture(scope="module")
def views(fmnist_batch) -> Views:
    """Two fixed global views (64, 3, 32, 32) of the batch, made once with a fixed generator
    by the runs' pipeline (every method here uses the same transform)."""
    cfg = compose(["backbone=resnet10t", "image_size=32", "device=cpu"])
    pipeline = Pipeline(OmegaConf.to_container(cfg.transform.ops, resolve=True), cfg.image_size)
    images, aspect, labels = fmnist_batch
    generator = make_generator(0, "cpu", 1234)
    with torch.no_grad():
        made = [pipeline(images, aspect, generator) for _ in range(2)]
    # the class labels are read by method=supervised only
    return Views(global_views=made, local_views=[], class_labels=labels)


@pytest.mark.parametrize("name", TWO_VIEW)
def test_steps_on_fixed_views_lower_the_loss(name: str, views: Views) -> None:
    torch.manual_seed(0)
    method, _ = small_method(name)
    method.train()
    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if not p.requires_grad}
    # The frozen parts are EMA targets (BYOL's, MoCo's, ...) and what a method fixes by design.
    fixed = FIXED.get(name, set())
    assert fixed <= frozen.keys()
    assert (len(frozen.keys() - fixed) > 0) == isinstance(method, EMATargetMethod)
    # Every parameter, frozen ones included: they must get no gradient, so no update.
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    # A memory bank fills with these views' own keys as the steps go: both losses are scored
    # against the bank the steps started from, or "after" would meet near-copies of its
    # positives among the negatives (MoCo's loss then rises while the network improves).
    banks = bank_state(method)
    with torch.no_grad():
        before = float(method.training_loss(views))
    for step in range(6):
        optimizer.zero_grad()
        loss = method.training_loss(views)
        assert loss.dtype == torch.float32 and loss.ndim == 0
        loss.backward()
        if step == 0:
            grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]
            assert all(g is not None for g in grads)
            assert sum(float(g.abs().sum()) for g in grads) > 0
            assert all(p.grad is None for p in method.parameters() if not p.requires_grad)
        optimizer.step()
    load_bank_state(method, banks)
    with torch.no_grad():
        after = float(method.training_loss(views))
    assert math.isfinite(before) and after < before, (before, after)
    params = dict(method.named_parameters())
    for n, old in frozen.items():
        assert torch.equal(params[n], old), n


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_the_targets_of_the_predictions_get_no_gradient(
    name: str, views: Views, monkeypatch
) -> None:
    torch.manual_seed(0)
    method, _ = small_method(name)
    seen: list[torch.Tensor] = []
    module = sys.modules[type(method).__module__]
    symmetric_loss = module.symmetric_loss

    def spy(criterion, p0: torch.Tensor, p1: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor):
        seen.extend((p0, p1, t0, t1))
        return symmetric_loss(criterion, p0, p1, t0, t1)

    monkeypatch.setattr(module, "symmetric_loss", spy)
    method.training_loss(views)
    p0, p1, t0, t1 = seen
    # SimSiam: stop-gradient on the projections; BYOL: the target network's outputs.
    assert p0.requires_grad and p1.requires_grad
    assert not t0.requires_grad and not t1.requires_grad
    assert p0.shape == t0.shape == (64, method.prediction_head.layers[-1].out_features)


def _target_pairs(method) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(online, target) parameter pairs of BYOL, in update order."""
    assert method.ema_pairs == [
        ("backbone", "backbone_target"), ("projection_head", "projection_head_target"),
    ]  # fmt: skip
    online = [*method.backbone.parameters(), *method.projection_head.parameters()]
    target = [*method.backbone_target.parameters(), *method.projection_head_target.parameters()]
    assert len(online) == len(target)
    return list(zip(online, target, strict=True))


def test_byol_target_is_the_ema_of_the_online_network(views: Views) -> None:
    torch.manual_seed(0)
    method, _ = small_method("byol")
    pairs = _target_pairs(method)
    assert all(not t.requires_grad for _, t in pairs)
    assert all(torch.equal(o, t) for o, t in pairs)  # the target starts as a copy
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method.training_loss(views).backward()
    optimizer.step()
    assert not all(torch.equal(o, t) for o, t in pairs)  # the online network moved alone
    old = [(o.detach().clone(), t.detach().clone()) for o, t in pairs]
    momentum = method.momentum_at(0, 100)
    assert momentum == 0.99  # the default: lightly benchmark's constant momentum
    assert method.momentum_at(99, 100) == 0.99
    method.update_target(momentum)
    for (_, t), (o_old, t_old) in zip(pairs, old, strict=True):
        torch.testing.assert_close(t, momentum * t_old + (1 - momentum) * o_old)


def test_byol_cosine_momentum_follows_the_paper() -> None:
    method, _ = build_method("method=byol", "method.momentum=0.996", "method.momentum_end=1.0")
    total = 101
    assert method.momentum_at(0, total) == pytest.approx(0.996)
    assert method.momentum_at(50, total) == pytest.approx(0.998)
    assert method.momentum_at(total - 1, total) == pytest.approx(1.0)
    # The paper: tau = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2 (K: last step here).
    for step in (10, 37, 80):
        paper = 1 - 0.004 * (math.cos(math.pi * step / (total - 1)) + 1) / 2
        assert method.momentum_at(step, total) == pytest.approx(paper)
    with pytest.raises(ValueError, match="momentum_end"):
        build_method("method=byol", "method.momentum=0.996", "method.momentum_end=0.5")


class _CheckEMA(pl.Callback):
    """Checks, around every training step, target = m·old target + (1 − m)·online with m
    from the paper's cosine, computed here independently of the module."""

    def __init__(self) -> None:
        self.momenta: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before = [(o.detach().clone(), t.detach().clone()) for o, t in _target_pairs(module)]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step - 1, trainer.estimated_stepping_batches
        m = 1 - 0.004 * (math.cos(math.pi * step / (total - 1)) + 1) / 2
        self.momenta.append(m)
        for (_, t), (o_old, t_old) in zip(_target_pairs(module), self.before, strict=True):
            torch.testing.assert_close(t, m * t_old + (1 - m) * o_old)


def test_byol_under_a_trainer_updates_its_target_on_the_cosine_schedule(fmnist_batch) -> None:
    torch.manual_seed(0)
    method, _ = small_method(
        "byol", "method.momentum=0.996", "method.momentum_end=1.0", "batch_size=8"
    )
    images, aspect, labels = (t[:32] for t in fmnist_batch)
    loader = DataLoader(TensorDataset(images, aspect, labels), batch_size=8, drop_last=True)
    check = _CheckEMA()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[check],
    )  # fmt: skip
    trainer.fit(method, loader)
    assert method.total_steps == 4
    assert check.momenta == pytest.approx([0.996, 0.997, 0.999, 1.0])  # cos(pi k / 3)
    # The optimiser holds the online network and the predictor, never the target.
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(t) not in optimised for _, t in _target_pairs(method))
    assert all(id(o) in optimised for o, _ in _target_pairs(method))
    assert all(id(p) in optimised for p in method.prediction_head.parameters())


def test_vicreg_trains_with_lars_without_decay_on_biases_and_norms() -> None:
    from sslbench.nn.optim import LARS

    # lightly's benchmark adapts every parameter (the default); the paper's code excludes
    # biases and norm weights, which this test checks.
    assert not compose(["method=vicreg"]).method.optimizer.exclude_bias_and_norm
    method, cfg = build_method(
        "method=vicreg", "batch_size=512", "method.optimizer.exclude_bias_and_norm=true"
    )
    opt = cfg.method.optimizer
    assert (opt.name, opt.exclude_bias_and_norm, opt.lr, opt.weight_decay) == (
        "lars", True, 0.3, 1e-4,
    )  # fmt: skip
    assert opt.warmup_epochs == 20.0 and opt.reference_batch_size == 256
    configured = configured_optimizers(method, 100, 50)
    optimizer = configured["optimizer"]
    assert isinstance(optimizer, LARS)
    weights, flat = optimizer.param_groups
    # 0.3 * 512 / 256, warmed up linearly over 20 epochs of 2 steps: 1/40 of it at step 0
    assert configured["lr_scheduler"]["scheduler"].base_lrs == pytest.approx([0.6, 0.6])
    assert weights["lr"] == pytest.approx(0.6 / 40) and flat["lr"] == pytest.approx(0.6 / 40)
    assert weights["weight_decay"] == 1e-4 and flat["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim <= 1 for p in flat["params"])


def test_lr_schedule_per_epoch_as_lightlys_benchmark() -> None:
    """schedule_interval: epoch steps the cosine once per epoch (lightly's CosineAnnealingLR
    with T_max = epochs); the default advances it every optimiser step."""
    method, _ = build_method("method=simclr", "method.optimizer.schedule_interval=epoch")
    configured = configured_optimizers(method, 40, 4)
    scheduler = configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "epoch"
    factors = [scheduler.lr_lambdas[0](epoch) for epoch in range(4)]
    assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    method, _ = build_method("method=simclr")
    configured = configured_optimizers(method, 40, 4)
    assert configured["lr_scheduler"]["interval"] == "step"
    assert configured["lr_scheduler"]["scheduler"].lr_lambdas[0](20) == pytest.approx(0.5)


@needs_fmnist
# SimCLR's in the fast suite; every other method's whole run is test_methods_learn's.
@pytest.mark.parametrize("name", ["simclr"])
def test_tiny_pretrain_run_completes(name: str, tmp_path) -> None:
    run_dir = tmp_path / "run"
    # A warm-up (VICReg's 20 epochs) would keep the lr near 0 in a 1-epoch run; the others
    # have none, so this changes nothing for them.
    no_warmup = "method.optimizer.warmup_epochs=0.0"
    # a memory bank no larger than the 128 training images
    banks = [f"method.{key}=128" for key in method_class(name).bank_keys]
    args = [f"method={name}", *TINY_RUN, no_warmup, *banks, f"run_dir={run_dir}"]
    assert main(["pretrain", *args]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["error"] is None
    assert results["method"] == name
    assert 0.0 <= results["linear_top1"] <= 1.0
    assert (run_dir / "last.ckpt").is_file()


def test_effective_rank_and_collapse_warning() -> None:
    torch.manual_seed(0)
    spread = torch.randn(256, 16)
    assert effective_rank(spread) > 12  # near 16 for isotropic embeddings
    line = torch.randn(256, 1) * torch.randn(1, 16)
    assert effective_rank(line) < 1.5

    class Trainer:  # what on_train_epoch_end reads: the epoch's logged metrics
        callback_metrics = {"embedding_std_ratio": torch.tensor(0.02)}
        current_epoch = 3

    method, _ = small_method("simclr")
    method._trainer = Trainer()  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="collapsing"):
        method.on_train_epoch_end()
    Trainer.callback_metrics = {"embedding_std_ratio": torch.tensor(0.9)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.on_train_epoch_end()
