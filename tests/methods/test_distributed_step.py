"""One optimiser step under DDP is the step of one process on the global batch (issue 13).

tests/nn/test_distributed_losses.py checks the losses on fixed embeddings; this file checks a
whole training step of a method as `sslbench pretrain` builds it (backbone, heads, loss,
optimiser). Two CPU processes (gloo) each wrap the method in torch's
DistributedDataParallel, as Lightning's DDP strategy does, take their half of a fixed global
batch of views, and make one step of the method's own optimiser (``configure_optimizers``:
SGD for SimCLR and Barlow Twins, LARS for VICReg). After it both processes must hold the
parameters that one process holds after the same step on the whole batch, because

* the losses gather the embeddings of every process (``gather_distributed``: SimCLR's
  negatives, Barlow Twins' standardisation and cross-correlation, VICReg's variance and
  covariance all come from the global batch), and DDP averages the gradients; and
* the lr is scaled by the GLOBAL batch size (``batch_size / reference_batch_size``: the
  module's ``batch_size`` is the global one on every device), so it does not change with
  the number of devices.

What is compared: the parameters after the step (atol 1e-5, rtol 1e-4), and, tighter, each
parameter's step direction, the optimiser's momentum buffer after its first step (the
parameter moves by lr times it), to 1e-4 of its norm. The parameters alone would say little:
at these lrs one step moves them by about 1e-4 (SimCLR) to 1e-6 (VICReg: LARS, in its
warm-up), which float32 rounds to a few ulps, so a step computed on half the batch would
pass a parameter tolerance for SimCLR and VICReg; the directions are not rounded by adding
them to the parameters. With ``method.gather_distributed=false`` each process's loss is its
half's only: the directions are then 10-40% off the whole batch's, far past the tolerance,
which shows the comparison catches a loss that is not gathered.

Batch norm: in training mode it normalises with each process's own batch statistics
(SyncBatchNorm refuses CPU tensors), which makes the step differ for a reason other than the
losses (left in training mode, this file's first test fails for all three methods); and the
projection heads of all three methods have it, whatever the backbone. So every
batch-norm module, of the backbone (resnet10t, the study's family) and of the heads, is put
in eval mode with its initial running statistics (a fixed affine map whose weight and bias
are still trained): the step then differs only where the losses or the optimiser do.

The views are fixed, seeded tensors handed straight to ``training_loss`` (no augmentation
streams). One pair of worker processes (this file run as a script) steps every method; a
module-scoped fixture reads what they saved.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
from distributed import WORLD, process_group, run_workers
from torch import Tensor, nn

N = 16  # images per view in the global batch: 8 per process
SIZE = 32  # view side, pixels

#: The methods whose DDP step is compared with the whole batch's, built with their classes'
#: small_overrides (the step is the same computation at any width).
METHODS = ("simclr", "barlowtwins", "vicreg")
VARIANTS = ("gathered", "local")  # gather_distributed true (the YAML's) / false

#: How far a DDP step's direction may be from the whole batch's, relative to it.
DIRECTION_RTOL = 1e-4


def _build(name: str, gather: bool) -> nn.Module:
    from conftest import small_method

    off = [] if gather else ["method.gather_distributed=false"]
    # batch_size: the global batch, on every process, as `sslbench pretrain` passes it
    return small_method(name, f"batch_size={N}", *off)[0]


def _views(rank: int | None = None):
    """Two correlated global views of the fixed global batch (rank: that process's half)."""
    from sslbench.methods.base import Views

    generator = torch.Generator().manual_seed(0)
    v0 = torch.randn(N, 3, SIZE, SIZE, generator=generator)
    v1 = v0 + 0.5 * torch.randn(N, 3, SIZE, SIZE, generator=generator)
    views = [v0, v1] if rank is None else [v0.chunk(WORLD)[rank], v1.chunk(WORLD)[rank]]
    return Views(global_views=views, local_views=[])


class _Loss(nn.Module):
    """The method's training loss as ``forward``: what DDP wraps (Lightning's wrapper of a
    LightningModule calls ``training_step`` from its ``forward`` in the same way)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views) -> Tensor:
        return self.method.training_loss(views)


class Step(NamedTuple):
    """What one optimiser step left: the parameters after it, each parameter's step
    direction (the momentum buffer after a first step: the parameter moved by lr times it),
    the loss, and the lr."""

    params: dict[str, Tensor]
    directions: dict[str, Tensor]
    loss: Tensor
    lr: float


def _step(method: nn.Module, views, ddp: bool) -> tuple:
    """One step of the method's optimiser on ``views``, the method wrapped in DDP if ``ddp``:
    a :class:`Step`'s fields (a plain tuple crosses the processes: this file is __main__ in
    the workers)."""
    method.train()
    for module in method.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()  # see the module docstring
    # configure_optimizers reads the step counts from the Trainer: a stand-in suffices.
    method._trainer = SimpleNamespace(estimated_stepping_batches=100, max_epochs=10)
    try:
        optimizer = method.configure_optimizers()["optimizer"]
    finally:
        method._trainer = None
    model = _Loss(method)
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer.zero_grad()
    loss = model(views)
    loss.backward()
    optimizer.step()
    named = dict(method.named_parameters())
    return (
        {n: p.detach().clone() for n, p in named.items()},
        {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in named.items()},
        loss.detach(),
        optimizer.param_groups[0]["lr"],
    )


def _worker(rank: int, folder: Path) -> None:
    """One DDP process: each method's step, gathered and local, on this rank's half."""
    with process_group(rank, folder):
        methods = torch.load(folder / "methods.pt", weights_only=False)
        results = {}
        for name, variants in methods.items():  # the same order on every rank
            for variant, method in variants.items():
                results[name, variant] = _step(method, _views(rank), ddp=True)
        torch.save(results, folder / f"rank{rank}.pt")


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def steps(module_folder: Path) -> dict[str, dict]:
    """Per method: ``before`` (its parameters), ``whole`` (the :class:`Step` of one process
    on the whole batch), per variant the WORLD processes' steps, ``optimizer`` (its config)
    and ``exempt`` (see :func:`_shift_invariant`)."""
    folder = module_folder
    methods = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initial weights every run
        for name in METHODS:
            gathered, local = _build(name, gather=True), _build(name, gather=False)
            local.load_state_dict(gathered.state_dict())  # the same initial weights
            methods[name] = {"gathered": gathered, "local": local}
    torch.save(methods, folder / "methods.pt")
    run_workers(__file__, folder)
    assert not torch.distributed.is_initialized()  # the whole batch: one process, no gather
    ranks = [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    out = {}
    for name, variants in methods.items():
        method = variants["gathered"]
        out[name] = {
            "before": {n: p.detach().clone() for n, p in method.named_parameters()},
            "whole": Step(*_step(copy.deepcopy(method), _views(), ddp=False)),
            **{variant: [Step(*r[name, variant]) for r in ranks] for variant in VARIANTS},
            "optimizer": method.method_cfg["optimizer"],
            "exempt": _shift_invariant(name, method),
        }
    return out


def _shift_invariant(name: str, method: nn.Module) -> set[str]:
    """The parameters whose gradient is 0 in exact arithmetic: Barlow Twins' and VICReg's
    losses do not change when a constant is added to the embeddings (they standardise or
    centre them, and VICReg's invariance term takes a difference of two views), so the last
    layer's bias gets only rounding noise, which LARS's trust ratio even magnifies. Their
    steps are compared with the parameters, not with the relative tolerance below."""
    if name not in ("barlowtwins", "vicreg"):
        return set()
    last = [m for m in method.projection_head.modules() if isinstance(m, nn.Linear)][-1]
    return {n for n, p in method.named_parameters() if p is last.bias}


def _error(step: Step, whole: Step, names) -> float:
    """‖step direction − the whole batch's‖ / ‖the whole batch's‖ over parameters ``names``."""
    diff = sum(((step.directions[n] - whole.directions[n]) ** 2).sum() for n in names)
    norm = sum((whole.directions[n] ** 2).sum() for n in names)
    return float((diff / norm).sqrt())


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_ddp_step_is_the_whole_batch_step(name: str, steps) -> None:
    step = steps[name]
    before, whole = step["before"], step["whole"]
    compared = [n for n in before if n not in step["exempt"]]
    assert len(step["exempt"]) == (name != "simclr")  # the last bias was found where it is one
    # The step moves every parameter (else there is nothing to compare).
    for n, p in whole.params.items():
        assert not torch.equal(p, before[n]), f"{n} did not change"
    for rank, ddp in enumerate(step["gathered"]):
        assert ddp.lr == whole.lr, "the lr follows the global batch, not the per-process one"
        for n, p in ddp.params.items():
            torch.testing.assert_close(p, whole.params[n], atol=1e-5, rtol=1e-4, msg=n)
        error = _error(ddp, whole, compared)
        assert error < DIRECTION_RTOL, f"rank {rank}: step {error:.1e} off the whole batch's"
        for n in compared:  # and every parameter tensor's step on its own
            assert _error(ddp, whole, [n]) < 10 * DIRECTION_RTOL, f"{n}, rank {rank}"
    # Each process's loss is its rows' share of the whole batch's loss.
    mean = torch.stack([ddp.loss for ddp in step["gathered"]]).mean()
    torch.testing.assert_close(mean, whole.loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_ddp_step_of_local_losses_is_not_the_whole_batch_step(name: str, steps) -> None:
    """gather_distributed=false: each process's loss sees only its half, and the step
    differs from the whole batch's by far more than the tolerance above (10-40% here)."""
    step = steps[name]
    compared = [n for n in step["before"] if n not in step["exempt"]]
    for ddp in step["local"]:
        assert _error(ddp, step["whole"], compared) > 100 * DIRECTION_RTOL


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", METHODS)
def test_processes_hold_the_same_parameters_after_the_step(name: str, variant: str, steps):
    """DDP's averaged gradients keep the replicas equal (gathered or not)."""
    first, *others = steps[name][variant]
    for ddp in others:
        for n, p in ddp.params.items():
            assert torch.equal(p, first.params[n]), n


@pytest.mark.parametrize("name", METHODS)
def test_lr_is_scaled_by_the_global_batch(name: str, steps) -> None:
    """The first step's lr: the YAML's times global batch / reference batch (times the
    warm-up's first factor: VICReg warms up over 20 epochs, 200 steps of the stand-in)."""
    opt = steps[name]["optimizer"]
    warmup = int(opt["warmup_epochs"] * 10)
    expected = opt["lr"] * N / opt["reference_batch_size"] / max(1, warmup)
    assert steps[name]["whole"].lr == pytest.approx(expected)
    assert all(ddp.lr == steps[name]["whole"].lr for ddp in steps[name]["gathered"])


if __name__ == "__main__":  # a worker of the `steps` fixture: --worker RANK FOLDER
    _worker(int(sys.argv[2]), Path(sys.argv[3]))
