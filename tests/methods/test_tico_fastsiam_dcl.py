"""TiCo, FastSiam, SimCLR with the (weighted) decoupled contrastive loss and SwAV with a
queue: each loss against a hand computation or lightly's own on the same embeddings, TiCo's
one-way loss and its running covariance (carried across steps and through a checkpoint),
FastSiam's four views, and swav_queue's configuration and queues. The registry-driven tests
(test_methods_*.py) cover what every method shares."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_method, small_method
from lightly.loss import DCLLoss, DCLWLoss, NegativeCosineSimilarity, NTXentLoss, TiCoLoss
from omegaconf import OmegaConf

from sslbench.config import compose
from sslbench.methods import Views, method_class
from sslbench.methods.base import EXTRA_STATE_KEY
from sslbench.methods.fastsiam import FastSiam, mean_of_others_loss
from sslbench.methods.swav import SwAV
from sslbench.methods.tico import COVARIANCE_KEY, TiCo


def _views(n: int = 16, count: int = 2, seed: int = 0) -> Views:
    """``count`` correlated random global views (n, 3, 32, 32): no augmentation streams."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 32, 32, generator=generator)
    made = [base + 0.5 * torch.randn(n, 3, 32, 32, generator=generator) for _ in range(count)]
    return Views(global_views=made, local_views=[])


def _record_calls(module: torch.nn.Module) -> list[torch.Tensor]:
    """The inputs of every later forward_features call of a timm backbone."""
    seen: list[torch.Tensor] = []
    forward_features = module.forward_features

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return forward_features(x)

    module.forward_features = record
    return seen


# -- TiCo --------------------------------------------------------------------------------------
def _second_moment(z: torch.Tensor) -> torch.Tensor:
    """TiCo's B: the second-moment matrix of the L2-normalised embeddings."""
    z = F.normalize(z, dim=1)
    return z.T @ z / z.shape[0]


def test_tico_defaults_are_lightlys_benchmark() -> None:
    cfg = compose(["method=tico"])
    m = cfg.method
    assert (m.hidden_dim, m.output_dim, m.beta, m.rho) == (1024, 256, 0.9, 8.0)
    assert (m.momentum, m.momentum_end, m.gather_distributed) == (0.996, 1.0, True)
    opt = m.optimizer
    assert (opt.name, opt.lr, opt.reference_batch_size, opt.momentum) == ("sgd", 0.3, 256, 0.9)
    assert (opt.weight_decay, opt.warmup_epochs, opt.schedule) == (1e-4, 20.0, "cosine")
    # beta and rho are lightly's own defaults: the benchmark calls TiCoLoss()
    assert (TiCoLoss().beta, TiCoLoss().rho) == (m.beta, m.rho)
    method, _ = build_method("method=tico")
    assert (
        isinstance(method, TiCo)
        and isinstance(method.criterion, TiCoLoss)
        and method.criterion.gather_distributed
    )
    assert method.momentum_at(0, 101) == pytest.approx(0.996)
    assert method.momentum_at(100, 101) == pytest.approx(1.0)


def test_tico_loss_goes_one_way_view0_online_view1_target() -> None:
    torch.manual_seed(0)
    method, _ = small_method("tico")
    method.train()
    views = _views()
    x0, x1 = views.global_views
    online, target = _record_calls(method.backbone), _record_calls(method.backbone_target)
    seen: list[torch.Tensor] = []
    forward = method.criterion.forward

    def spy(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        seen.extend((z_a, z_b))
        return forward(z_a, z_b)

    method.criterion.forward = spy
    loss = method.training_loss(views)
    # View 0 alone through the online network, view 1 alone through the target.
    assert len(online) == 1 and online[0] is x0
    assert len(target) == 1 and target[0] is x1
    z0, t1 = seen
    assert z0.requires_grad and not t1.requires_grad
    # ... and the loss is lightly's on (online z of view 0, target z of view 1).
    with torch.no_grad():
        expected_z0 = method.projection_head(method.backbone(x0))
        expected_t1 = method.projection_head_target(method.backbone_target(x1))
    torch.testing.assert_close(z0.detach(), expected_z0)
    torch.testing.assert_close(t1, expected_t1)
    fresh = TiCoLoss(beta=0.9, rho=8.0)
    torch.testing.assert_close(loss.detach(), fresh(expected_z0, expected_t1))
    # A gradient reaches view 0 through the online network, none reaches view 1.
    x0 = x0.clone().requires_grad_()
    x1 = x1.clone().requires_grad_()
    method.criterion = TiCoLoss()
    method.training_loss(Views(global_views=[x0, x1], local_views=[])).backward()
    assert x0.grad is not None and float(x0.grad.abs().sum()) > 0
    assert x1.grad is None
    # One-way: swapping the views gives another loss (same C, same networks).
    swapped_views = Views(global_views=views.global_views[::-1], local_views=[])
    with torch.no_grad():
        method.criterion = TiCoLoss()
        forward = float(method.training_loss(views))
        method.criterion = TiCoLoss()
        swapped = float(method.training_loss(swapped_views))
    assert abs(forward - swapped) > 1e-4


def test_tico_refuses_joint_forward() -> None:
    from sslbench.errors import ConfigError

    with pytest.raises(ConfigError, match="one view through each network"):
        build_method("method=tico", "method.joint_forward=true")


def test_tico_covariance_is_carried_across_steps() -> None:
    torch.manual_seed(0)
    method, _ = small_method("tico")
    method.train()
    beta = method.criterion.beta
    assert method.criterion.C is None  # nothing seen yet
    zs = []
    for seed in (1, 2, 3):
        views = _views(seed=seed)
        with torch.no_grad():
            zs.append(method.projection_head(method.backbone(views.global_views[0])))
        method.training_loss(views)
    # C = beta * C_prev + (1 - beta) * B_step, from zeros: the EMA of every step's B.
    expected = torch.zeros(64, 64)
    for z in zs:
        expected = beta * expected + (1 - beta) * _second_moment(z)
    torch.testing.assert_close(method.criterion.C, expected, rtol=1e-4, atol=1e-6)
    # The next loss uses the carried C: it differs from a fresh criterion's.
    views = _views(seed=4)
    with torch.no_grad():
        carried = float(method.training_loss(views))
        method.criterion = TiCoLoss()
        fresh = float(method.training_loss(views))
    assert abs(carried - fresh) > 1e-4


def test_tico_checkpoint_keeps_the_covariance() -> None:
    torch.manual_seed(0)
    method, _ = small_method("tico")
    method.train()
    assert COVARIANCE_KEY not in method.extra_checkpoint_state()  # None before a step
    for seed in (1, 2):
        method.training_loss(_views(seed=seed))
    checkpoint: dict = {}
    method.on_save_checkpoint(checkpoint)
    state = checkpoint[EXTRA_STATE_KEY]
    torch.testing.assert_close(state[COVARIANCE_KEY], method.criterion.C)
    assert state[COVARIANCE_KEY] is not method.criterion.C  # a copy, not the live tensor

    restored, _ = small_method("tico")
    restored.train()
    restored.on_load_checkpoint(checkpoint)  # before the state_dict, as Lightning does
    restored.load_state_dict(method.state_dict())
    torch.testing.assert_close(restored.criterion.C, method.criterion.C)
    # The resumed method's next step is the original's.
    views = _views(seed=3)
    torch.manual_seed(5)
    a = method.training_loss(views)
    torch.manual_seed(5)
    b = restored.training_loss(views)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(restored.criterion.C, method.criterion.C)

    # A checkpoint of another output_dim is a clear error.
    wider, _ = small_method("tico", "method.output_dim=32")
    with pytest.raises(ValueError, match="another method.output_dim"):
        wider.on_load_checkpoint(checkpoint)


def test_tico_covariance_follows_the_embeddings_device() -> None:
    """A checkpoint's C is put back before Lightning moves the module to its device, and a
    plain attribute does not move with ``.to()``: each step moves C to the embeddings'."""
    method, _ = small_method("tico")
    method.criterion.C = torch.zeros(64, 64)
    method._covariance_to(torch.device("meta"))
    assert method.criterion.C.device == torch.device("meta")


# -- FastSiam ----------------------------------------------------------------------------------
def test_fastsiam_loss_is_the_mean_of_the_others_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    p = [torch.randn(5, 3, generator=generator) for _ in range(4)]
    z = [torch.randn(5, 3, generator=generator) for _ in range(4)]
    loss = mean_of_others_loss(NegativeCosineSimilarity(), p, z)
    hand = 0.0
    for i in range(4):
        others = [z[j] for j in range(4) if j != i]
        target = (others[0] + others[1] + others[2]) / 3
        for row in range(5):
            a, b = p[i][row], target[row]
            hand -= float(a @ b / (a.norm() * b.norm())) / 5  # -cos, averaged over rows
    assert float(loss) == pytest.approx(hand / 4, rel=1e-5)
    # Two views: SimSiam's symmetric loss.
    two = mean_of_others_loss(NegativeCosineSimilarity(), p[:2], z[:2])
    simsiam = 0.5 * (
        NegativeCosineSimilarity()(p[0], z[1]) + NegativeCosineSimilarity()(p[1], z[0])
    )
    torch.testing.assert_close(two, simsiam)
    with pytest.raises(ValueError, match="two views or more"):
        mean_of_others_loss(NegativeCosineSimilarity(), p[:1], z[:1])


def test_fastsiam_makes_four_views_and_trains_on_all_of_them(fmnist_batch) -> None:
    torch.manual_seed(0)
    method, cfg = small_method("fastsiam")
    assert isinstance(method, FastSiam) and method.num_global_views == 4
    opt = cfg.method.optimizer
    assert (opt.lr, opt.reference_batch_size, opt.weight_decay) == (0.06, None, 5e-4)
    images, aspect, _ = fmnist_batch
    views = method.make_views(images[:8], aspect[:8])
    assert [v.shape for v in views.global_views] == [(8, 3, 32, 32)] * 4
    assert views.local_views == []
    assert not torch.equal(views.global_views[0], views.global_views[1])  # each its own draw
    method.train()
    seen = _record_calls(method.backbone)
    loss = method.training_loss(views)
    assert [x.shape[0] for x in seen] == [8] * 4  # each view through the backbone alone
    # The loss is the formula on the module's own projections and predictions.
    torch.manual_seed(0)
    with torch.no_grad():
        z = [method.projection_head(method.backbone(v)) for v in views.global_views]
        p = [method.prediction_head(zi) for zi in z]
    torch.testing.assert_close(loss.detach(), mean_of_others_loss(method.criterion, p, z))
    # Stop-gradient on the targets: the gradient reaches every view through its prediction.
    inputs = [v.clone().requires_grad_() for v in views.global_views]
    method.training_loss(Views(global_views=inputs, local_views=[])).backward()
    assert all(x.grad is not None and float(x.grad.abs().sum()) > 0 for x in inputs)


def test_fastsiam_targets_get_no_gradient(monkeypatch) -> None:
    import sslbench.methods.fastsiam as module

    torch.manual_seed(0)
    method, _ = small_method("fastsiam")
    seen: list = []
    original = module.mean_of_others_loss

    def spy(criterion, predictions, targets):
        seen.extend((predictions, targets))
        return original(criterion, predictions, targets)

    monkeypatch.setattr(module, "mean_of_others_loss", spy)
    method.training_loss(_views(n=8, count=4))
    predictions, targets = seen
    assert len(predictions) == len(targets) == 4
    assert all(p.requires_grad for p in predictions)
    assert not any(t.requires_grad for t in targets)


def test_fastsiam_joint_forward_passes_the_four_views_at_once() -> None:
    method, _ = small_method("fastsiam", "method.joint_forward=true")
    method.train()
    seen = _record_calls(method.backbone)
    method.training_loss(_views(n=8, count=4))
    assert [x.shape[0] for x in seen] == [32]


# -- SimCLR with DCL / DCLW --------------------------------------------------------------------
@pytest.mark.parametrize(("name", "loss_cls"), [("simclr_dcl", DCLLoss), ("simclr_dclw", DCLWLoss)])
def test_decoupled_loss_is_lightlys_and_not_ntxent(name: str, loss_cls: type) -> None:
    """On one process the loss is lightly's DCLLoss / DCLWLoss (DCLW: lightly's DCLLoss with
    sslbench's weights, normalised over the global batch: lightly's on one process)."""
    torch.manual_seed(0)
    method, cfg = small_method(name)
    assert type(method.criterion) is DCLLoss and method.criterion.gather_distributed
    assert (method.criterion.weight_fn is None) == (loss_cls is DCLLoss)
    assert method.criterion.temperature == cfg.method.temperature == 0.1
    method.train()
    views = _views()
    loss = method.training_loss(views)
    x0, x1 = views.global_views
    with torch.no_grad():
        z0 = method.projection_head(method.backbone(x0))
        z1 = method.projection_head(method.backbone(x1))
    lightly_loss = loss_cls(temperature=0.1) if loss_cls is DCLLoss else loss_cls(0.1, sigma=0.5)
    torch.testing.assert_close(loss.detach(), lightly_loss(z0, z1))
    ntxent = NTXentLoss(temperature=0.1)(z0, z1)
    assert abs(float(loss.detach()) - float(ntxent)) > 1e-3


def test_dcl_loss_is_ntxent_without_the_positive_in_the_denominator() -> None:
    """Hand formula on small embeddings: per row, -s_pos/τ + log Σ_neg exp(s/τ) over the
    2N - 2 negatives, averaged over rows and both directions; NT-Xent adds the positive to
    the sum, so it is larger."""
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    tau = 0.1
    a, b = F.normalize(z0, dim=1), F.normalize(z1, dim=1)

    def one_way(u: torch.Tensor, v: torch.Tensor) -> float:
        total = 0.0
        for i in range(4):
            negatives = [float(u[i] @ u[k]) for k in range(4) if k != i]
            negatives += [float(u[i] @ v[k]) for k in range(4) if k != i]
            total += -float(u[i] @ v[i]) / tau + math.log(sum(math.exp(s / tau) for s in negatives))
        return total / 4

    hand = 0.5 * (one_way(a, b) + one_way(b, a))
    assert float(DCLLoss(temperature=tau)(z0, z1)) == pytest.approx(hand, rel=1e-5)
    assert float(NTXentLoss(temperature=tau)(z0, z1)) > hand


def test_dclw_weights_the_positive_pairs_with_sigma() -> None:
    method, cfg = small_method("simclr_dclw", "method.sigma=0.25")
    assert cfg.method.sigma == 0.25
    assert method.criterion.weight_fn.keywords == {"sigma": 0.25}
    assert compose(["method=simclr_dclw"]).method.sigma == 0.5  # lightly's default, the benchmark's


# -- SwAV with a queue -------------------------------------------------------------------------
def test_swav_queue_is_swav_with_lightlys_queue_settings() -> None:
    queue, swav = compose(["method=swav_queue"]).method, compose(["method=swav"]).method
    assert issubclass(method_class("swav_queue"), SwAV)
    assert queue.name == "swav_queue"
    assert (queue.queue_length, queue.queue_start_epoch, queue.freeze_prototypes_epochs) == (
        384, 15, 1.0,
    )  # fmt: skip
    differ = {"name", "queue_length", "freeze_prototypes_epochs"}
    a, b = OmegaConf.to_container(queue), OmegaConf.to_container(swav)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == differ
    assert "queue_length" in SwAV.bank_keys  # the run refuses a queue larger than its data


def test_swav_queue_builds_two_queues_that_fill_then_join(fmnist_batch) -> None:
    torch.manual_seed(0)
    method, cfg = small_method("swav_queue", "method.queue_length=384")
    assert isinstance(method, SwAV) and cfg.method.queue_length == 384
    dim = cfg.method.output_dim
    assert [tuple(q.bank.shape) for q in method.queues] == [(384, dim)] * 2
    small, _ = small_method("swav_queue", "method.queue_length=64")
    assert [tuple(q.bank.shape) for q in small.queues] == [(64, dim)] * 2
    images, aspect, _ = fmnist_batch
    views = small.make_views(images[:16], aspect[:16])
    small.train()
    small.training_loss(views)  # epoch 0 < queue_start_epoch: the queues fill, unused
    assert [int(q.bank_ptr) for q in small.queues] == [16, 16]
