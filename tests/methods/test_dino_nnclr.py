"""DINO and NNCLR on real Fashion-MNIST images: DINO's teacher is the student's EMA and gets
no gradient, its loss sees the teacher's 2 global outputs and the student's 8, the teacher
temperature warms up over epochs and the centre moves (and is checkpointed); NNCLR's
positives are the max-cosine entries of its support set, which only z1 updates, and a tiny
real run of each completes."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import TINY_RUN, needs_fmnist, small_method
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from sslbench.cli import main
from sslbench.errors import ConfigError
from sslbench.methods import Views, method_class
from sslbench.methods.banks import bank_state, check_bank_sizes
from sslbench.methods.dino import DINO
from sslbench.methods.nnclr import NNCLR

N = 16  # images per view in the unit tests


def _views(model, fmnist_batch) -> Views:
    """The method's views of the first N images of the fixed batch (seeded streams)."""
    images, aspect, _ = fmnist_batch
    with torch.no_grad():
        return model.make_views(images[:N], aspect[:N])


def _spy_on_criterion(model, monkeypatch) -> list[dict]:
    """Record every call of the model's loss: its arguments, then call it."""
    calls: list[dict] = []
    forward = model.criterion.forward

    def spy(*args, **kwargs):
        calls.append({"args": args, "kwargs": kwargs})
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.criterion, "forward", spy)
    return calls


# -- DINO --------------------------------------------------------------------------------------
def _pairs(model: DINO) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(student, teacher) parameter pairs, in update order."""
    assert model.ema_pairs == [
        ("backbone", "backbone_target"), ("projection_head", "projection_head_target"),
    ]  # fmt: skip
    student = [*model.backbone.parameters(), *model.projection_head.parameters()]
    teacher = [*model.backbone_target.parameters(), *model.projection_head_target.parameters()]
    assert len(student) == len(teacher)
    return list(zip(student, teacher, strict=True))


def test_dino_teacher_gets_no_gradient_and_is_the_students_ema(fmnist_batch) -> None:
    torch.manual_seed(0)
    model, _ = small_method("dino")
    model.train()
    pairs = _pairs(model)
    assert all(not t.requires_grad for _, t in pairs)
    assert all(torch.equal(s, t) for s, t in pairs)  # the teacher starts as the student
    views = _views(model, fmnist_batch)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.training_loss(views).backward()
    assert all(t.grad is None for _, t in pairs)
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    # The weight-normalised last layer's length g stays 1 (norm_last_layer): not trained.
    assert not model.projection_head.last_layer.weight_g.requires_grad
    optimizer.step()
    assert not all(torch.equal(s, t) for s, t in pairs)  # the student moved alone
    old = [(s.detach().clone(), t.detach().clone()) for s, t in pairs]
    momentum = model.momentum_at(0, 100)
    assert momentum == model.momentum_at(99, 100) == 0.99  # lightly benchmark's constant
    model.update_target(momentum)
    for (_, t), (s_old, t_old) in zip(pairs, old, strict=True):
        torch.testing.assert_close(t, momentum * t_old + (1 - momentum) * s_old)


def test_dino_loss_sees_the_teachers_2_global_and_the_students_8_outputs(
    fmnist_batch, monkeypatch
) -> None:
    torch.manual_seed(0)
    model, _ = small_method("dino", "method.local_views.count=6")  # the default 6 local views
    model.train()
    # The loss's epoch is the Trainer's (its teacher temperature warm-up reads it).
    monkeypatch.setattr(DINO, "current_epoch", property(lambda self: 7))
    calls = _spy_on_criterion(model, monkeypatch)
    views = _views(model, fmnist_batch)
    assert len(views.global_views) == 2 and len(views.local_views) == 6
    loss = model.training_loss(views)
    assert loss.ndim == 0 and torch.isfinite(loss)
    (call,) = calls
    teacher, student = call["args"]
    assert call["kwargs"] == {"epoch": 7}
    k = model.method_cfg["output_dim"]
    assert len(teacher) == 2 and len(student) == 8
    assert all(t.shape == (N, k) and not t.requires_grad for t in teacher)
    assert all(s.shape == (N, k) and s.requires_grad for s in student)
    # Teacher: the EMA networks on the global views; student: global views, then local ones.
    with torch.no_grad():
        for t, view in zip(teacher, views.global_views, strict=True):
            expected = model.projection_head_target(model.backbone_target(view))
            torch.testing.assert_close(t, expected)
        for s, view in zip(student, [*views.global_views, *views.local_views], strict=True):
            torch.testing.assert_close(s, model.projection_head(model.backbone(view)))


def _dino_loss_by_hand(
    teacher: Tensor, student: Tensor, center: Tensor, teacher_temp: float, student_temp: float
) -> Tensor:
    """DINO's loss: mean over images and over (teacher view i, student view j) pairs with
    i != j of -sum_k softmax((t_i - c) / tau_t)_k * log softmax(s_j / tau_s)_k."""
    terms = []
    for i, t in enumerate(teacher):
        q = F.softmax((t - center) / teacher_temp, dim=-1)
        for j, s in enumerate(student):
            if i != j:
                terms.append(-(q * F.log_softmax(s / student_temp, dim=-1)).sum(-1).mean())
    return torch.stack(terms).mean()


def test_dino_teacher_temperature_warms_up_over_epochs() -> None:
    # The paper's warm-up, 0.04 to 0.07 over 30 epochs (lightly's benchmark has none).
    model, _ = small_method("dino", "method.teacher_temp=0.07")
    criterion = model.criterion
    k = model.method_cfg["output_dim"]
    generator = torch.Generator().manual_seed(0)
    # Teacher outputs small enough that 0.04 and 0.07 give different, unsaturated softmaxes
    teacher = torch.randn(2, 4, k, generator=generator) * 0.05
    student = torch.randn(8, 4, k, generator=generator) * 3
    center = torch.randn(1, 1, k, generator=generator) * 0.01
    # DINOLoss: a linear schedule of 30 values from 0.04 to 0.07, epoch e takes value e.
    for epoch, temp in [(0, 0.04), (15, 0.04 + 0.03 * 15 / 29), (29, 0.07), (40, 0.07)]:
        criterion.center.copy_(center)
        loss = criterion(list(teacher), list(student), epoch=epoch)
        expected = _dino_loss_by_hand(teacher, student, center, temp, 0.1)
        torch.testing.assert_close(loss, expected, msg=f"epoch {epoch}")
    at = {}
    for epoch in (0, 40):
        criterion.center.copy_(center)
        at[epoch] = float(criterion(list(teacher), list(student), epoch=epoch))
    assert not math.isclose(at[0], at[40], rel_tol=1e-2), at
    # lightly's benchmark defaults: 0.04 throughout, the same loss at every epoch.
    default, _ = small_method("dino")
    losses = []
    for epoch in (0, 40):
        default.criterion.center.copy_(center)
        losses.append(default.criterion(list(teacher), list(student), epoch=epoch))
    torch.testing.assert_close(losses[0], losses[1])
    expected = _dino_loss_by_hand(teacher, student, center, 0.04, 0.1)
    torch.testing.assert_close(losses[0], expected)


def test_dino_centre_moves_with_each_step_and_is_checkpointed(fmnist_batch, monkeypatch) -> None:
    torch.manual_seed(0)
    model, _ = small_method("dino")
    model.train()
    calls = _spy_on_criterion(model, monkeypatch)
    center = model.criterion.center
    assert center.shape == (1, 1, model.method_cfg["output_dim"])
    assert torch.count_nonzero(center) == 0
    views = _views(model, fmnist_batch)
    expected = torch.zeros_like(center)
    for step in range(2):
        model.training_loss(views)
        teacher = torch.stack(calls[step]["args"][0])  # (2, N, K)
        # c <- m c + (1 - m) mean of the teacher's outputs over views and images, m = 0.9
        expected = 0.9 * expected + 0.1 * teacher.mean(dim=(0, 1), keepdim=True)
        torch.testing.assert_close(model.criterion.center, expected)
    assert torch.count_nonzero(model.criterion.center) > 0
    # A persistent buffer: the checkpoint's state_dict holds it and a resumed run gets it.
    state = model.state_dict()
    torch.testing.assert_close(state["criterion.center"], expected)
    fresh, _ = small_method("dino")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.criterion.center, expected)


class _Momenta(pl.Callback):
    """Checks, around every training step, teacher = m·old teacher + (1 − m)·student with
    m = 0.99 (the update comes before the step's forward pass), and that the centre moved."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before = [(s.detach().clone(), t.detach().clone()) for s, t in _pairs(module)]
        self.center = module.criterion.center.clone()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        for (_, t), (s_old, t_old) in zip(_pairs(module), self.before, strict=True):
            torch.testing.assert_close(t, 0.99 * t_old + 0.01 * s_old)
        assert not torch.equal(module.criterion.center, self.center)
        self.steps += 1


def test_dino_under_a_trainer_updates_teacher_and_centre_every_step(fmnist_batch) -> None:
    torch.manual_seed(0)
    model, _ = small_method("dino", "batch_size=8")
    images, aspect, labels = (t[:16] for t in fmnist_batch)
    loader = DataLoader(TensorDataset(images, aspect, labels), batch_size=8, drop_last=True)
    check = _Momenta()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[check],
    )  # fmt: skip
    trainer.fit(model, loader)
    assert check.steps == 2
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(t) not in optimised for _, t in _pairs(model))
    assert all(id(s) in optimised for s, _ in _pairs(model) if s.requires_grad)


# -- NNCLR -------------------------------------------------------------------------------------
def test_nnclr_neighbour_is_the_max_cosine_bank_entry() -> None:
    model, _ = small_method("nnclr")
    bank = model.memory_bank
    size, dim = bank.bank.shape
    assert (size, dim) == (128, model.method_cfg["output_dim"])
    assert bank.gather_distributed  # updated with the global batch under DDP
    generator = torch.Generator().manual_seed(0)
    entries = torch.randn(size, dim, generator=generator)
    # Lengths from 0.1 to 10: the largest dot product is then often not the largest cosine.
    entries *= torch.logspace(-1, 1, size)[torch.randperm(size, generator=generator)][:, None]
    bank.bank.copy_(entries)
    queries = torch.randn(32, dim, generator=generator)
    neighbours = bank(queries, update=False)
    cosine = F.normalize(queries, dim=1) @ F.normalize(entries, dim=1).T
    torch.testing.assert_close(neighbours, entries[cosine.argmax(dim=1)], rtol=0, atol=0)
    by_dot = entries[(queries @ entries.T).argmax(dim=1)]
    assert not torch.equal(neighbours, by_dot)  # the test tells cosine from dot product
    assert torch.equal(bank.bank, entries)  # update=False leaves the bank as it was


def test_nnclr_bank_holds_the_last_z1_and_neighbours_come_from_before(
    fmnist_batch, monkeypatch
) -> None:
    torch.manual_seed(0)
    model, _ = small_method("nnclr")
    model.train()
    bank = model.memory_bank
    queried: list[tuple[Tensor, bool, Tensor, Tensor]] = []
    forward = bank.forward

    def spy(output: Tensor, update: bool = False) -> Tensor:
        before = bank.bank.clone()
        neighbours = forward(output, update=update)
        queried.append((output.clone(), update, neighbours, before))
        return neighbours

    monkeypatch.setattr(bank, "forward", spy)
    views = _views(model, fmnist_batch)
    size = bank.bank.shape[0]
    for step in range(2):
        old, ptr = bank.bank.clone(), int(bank.bank_ptr)
        assert ptr == step * N
        loss = model.training_loss(views)
        assert torch.isfinite(loss)
        (z0, update0, nn0, before0), (z1, update1, nn1, before1) = queried[2 * step :]
        assert not update0 and update1  # only z1 enters the support set
        assert not z0.requires_grad and not z1.requires_grad  # detached projections
        # Both neighbours come from the bank as it was before this step: rows of `old`.
        assert torch.equal(before0, old) and torch.equal(before1, old)
        for neighbours in (nn0, nn1):
            assert all((row == old).all(dim=1).any() for row in neighbours)
        # The bank now holds z1 at the write position, everything else unchanged.
        assert torch.equal(bank.bank[ptr : ptr + N], z1)
        assert torch.equal(bank.bank[ptr + N :], old[ptr + N :])
        assert torch.equal(bank.bank[:ptr], old[:ptr])
        assert int(bank.bank_ptr) == (ptr + N) % size
        assert not (bank.bank == z0[:1]).all(dim=1).any()  # z0 is not in the bank
    # The checkpoint's extra state holds the bank and its write position (lightly keeps them
    # in non-persistent buffers, outside the state_dict).
    state = bank_state(model)
    assert torch.equal(state["memory_bank.bank"], bank.bank)
    assert int(state["memory_bank.bank_ptr"]) == 2 * N


def test_nnclr_loss_gets_gradient_only_through_the_predictions(fmnist_batch, monkeypatch) -> None:
    torch.manual_seed(0)
    model, _ = small_method("nnclr")
    model.train()
    calls = _spy_on_criterion(model, monkeypatch)
    model.training_loss(_views(model, fmnist_batch))
    # 0.5 * (NT-Xent(nn0, p1) + NT-Xent(nn1, p0)): the neighbour first, the prediction second.
    assert len(calls) == 2
    for call in calls:
        neighbours, predictions = call["args"]
        assert not neighbours.requires_grad and predictions.requires_grad
    assert model.criterion.gather_distributed  # negatives from every process under DDP
    assert model.criterion.temperature == 0.5  # lightly benchmark's NTXentLoss()


def test_nnclr_bank_larger_than_the_training_set_is_refused() -> None:
    _, cfg = small_method("nnclr", "method.memory_bank_size=4096", "batch_size=64")
    assert NNCLR.bank_keys == ("memory_bank_size",)
    with pytest.raises(ConfigError, match="method.memory_bank_size=4096 is larger"):
        check_bank_sizes(cfg, NNCLR.bank_keys, 1000)
    check_bank_sizes(cfg, NNCLR.bank_keys, 4096)


# -- tiny real runs ----------------------------------------------------------------------------
@needs_fmnist
@pytest.mark.parametrize("name", ["dino", "nnclr"])
def test_tiny_run_completes(name: str, tmp_path) -> None:
    run_dir = tmp_path / "run"
    small = method_class(name).small_overrides
    assert main(["pretrain", f"method={name}", *TINY_RUN, *small, f"run_dir={run_dir}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["error"] is None
    assert results["method"] == name
    assert 0.0 <= results["linear_top1"] <= 1.0 and 0.0 <= results["knn_top1"] <= 1.0
    assert (run_dir / "last.ckpt").is_file()
