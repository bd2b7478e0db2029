"""Under DDP each of W processes holds 1/W of the global batch; what needs the whole batch
must see it. Each loss, built by its method from the shipped YAML, runs on two CPU processes
(gloo), each on its half of fixed embeddings, and must give

(a) losses whose mean over the processes is the loss of one process on the whole batch, and
(b) gradients on each half that, divided by W (as DDP's averaging of parameter gradients
    does), are the whole batch's gradient on those rows,

so that a run on W devices computes what one device would on the global batch. lightly's
BarlowTwinsLoss fails (a): it standardises with each process's own statistics, which is why
Barlow Twins uses sslbench's own loss (sslbench/nn/losses/barlowtwins.py).

One pair of worker processes (this file run as a script) computes every loss; a
module-scoped fixture reads what they saved.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from distributed import WORLD, process_group, run_workers
from torch import Tensor, nn

N = 16  # images per view in the global batch: 8 per process
DIM = 32  # embedding dimensions

#: The methods whose criteria are tested here, each with its own whole-batch inputs (below);
#: built with their classes' small_overrides: only the criteria are used.
GATHERING = ("simclr", "vicreg", "barlowtwins", "swav", "vicregl", "mocov3")


# -- the cases: a criterion, its whole-batch inputs (batch first) and how it is called -------
@dataclass
class Case:
    """A criterion with the global batch's inputs; ``trainable[i]``: whether input i gets a
    gradient (embeddings do, VICRegL's location grids do not)."""

    criterion: nn.Module
    inputs: list[Tensor]
    trainable: list[bool]
    call: str  # a key of CALLS


def _pair(criterion: nn.Module, t: Sequence[Tensor]) -> Tensor:
    return criterion(t[0], t[1])


def _swav(criterion: nn.Module, t: Sequence[Tensor]) -> Tensor:
    # two high-resolution crops (which give codes) and two low-resolution ones
    return criterion(list(t[0:2]), list(t[2:4]))


def _vicregl(criterion: nn.Module, t: Sequence[Tensor]) -> Tensor:
    # per view: (pooled projection, local projection map); then the views' location grids
    return criterion([(t[0], t[1]), (t[2], t[3])], [t[4], t[5]],
                     [(t[6], t[7]), (t[8], t[9])], [t[10], t[11]])  # fmt: skip


CALLS: dict[str, Callable[[nn.Module, Sequence[Tensor]], Tensor]] = {
    "pair": _pair, "swav": _swav, "vicregl": _vicregl,
}  # fmt: skip


def _views(generator: torch.Generator) -> list[Tensor]:
    """Two correlated views' embeddings (N, DIM) with per-dimension means and scales, so that
    standardising with a half's statistics differs from the whole batch's."""
    scale = torch.linspace(0.3, 3.0, DIM)
    z0 = torch.randn(N, DIM, generator=generator) * scale + torch.linspace(-2.0, 2.0, DIM)
    z1 = z0 + 0.5 * torch.randn(N, DIM, generator=generator) * scale
    return [z0, z1]


def _scores(generator: torch.Generator, crops: int, prototypes: int = 10) -> list[Tensor]:
    """Cosine similarities (N, prototypes) of ``crops`` crops' projections with prototypes."""
    protos = nn.functional.normalize(torch.randn(prototypes, 8, generator=generator), dim=1)
    return [
        nn.functional.normalize(torch.randn(N, 8, generator=generator), dim=1) @ protos.T
        for _ in range(crops)
    ]


def _vicregl_inputs(generator: torch.Generator, num_matches: tuple[int, int]) -> list[Tensor]:
    """Global then local views' (projection, local map) and location grids, the maps just
    large enough for the criterion's matches."""
    side, local_side = (math.ceil(math.sqrt(m)) for m in num_matches)

    def view(s: int) -> list[Tensor]:
        return [torch.randn(N, DIM, generator=generator),
                torch.randn(N, s, s, 16, generator=generator)]  # fmt: skip

    def grid(s: int) -> Tensor:
        return torch.rand(N, s, s, 2, generator=generator)

    return [*view(side), *view(side), grid(side), grid(side),
            *view(local_side), *view(local_side), grid(local_side), grid(local_side)]  # fmt: skip


def _criteria(gather: bool = True) -> dict[str, nn.Module]:
    """Each method's criterion, built by the method from its YAML (gathers off if not
    ``gather``)."""
    from conftest import small_method

    criteria = {}
    for name in GATHERING:
        key = "sinkhorn_gather_distributed" if name == "swav" else "gather_distributed"
        off = [] if gather else [f"method.{key}=false"]
        criteria[name] = small_method(name, *off)[0].criterion
    return criteria


def _cases(criteria: dict[str, nn.Module]) -> dict[str, Case]:
    from lightly.loss import BarlowTwinsLoss as LightlyBarlowTwinsLoss

    generator = torch.Generator().manual_seed(0)
    views = _views(generator)
    vicregl = _vicregl_inputs(generator, criteria["vicregl"].num_matches)
    barlow = criteria["barlowtwins"]
    lightly_barlow = LightlyBarlowTwinsLoss(barlow.lambda_param, gather_distributed=True)
    return {
        "simclr": Case(criteria["simclr"], views, [True, True], "pair"),
        "vicreg": Case(criteria["vicreg"], views, [True, True], "pair"),
        "barlowtwins": Case(barlow, views, [True, True], "pair"),
        "lightly_barlowtwins": Case(lightly_barlow, views, [True, True], "pair"),
        "swav": Case(criteria["swav"], _scores(generator, 4), [True] * 4, "swav"),
        "vicregl": Case(criteria["vicregl"], vicregl,
                        [True, True, True, True, False, False] * 2, "vicregl"),
        # queries of one view against keys of the other (keys trainable here: the gather's
        # backward must also give them the whole batch's gradient)
        "mocov3": Case(criteria["mocov3"], views, [True, True], "pair"),
    }  # fmt: skip


@dataclass
class Result:
    loss: Tensor
    grads: list[Tensor | None]


def _run(case: Case, inputs: Sequence[Tensor]) -> Result:
    """The case's loss on ``inputs`` and its gradients on them."""
    trainable = zip(inputs, case.trainable, strict=True)
    leaves = [t.detach().clone().requires_grad_(g) for t, g in trainable]
    loss = CALLS[case.call](case.criterion, leaves)
    loss.sum().backward()  # SwAV's and VICRegL's losses have shape (1,)
    return Result(loss.detach().reshape(()), [t.grad for t in leaves])


def _worker(rank: int, folder: Path) -> None:
    """One DDP process: each case's loss and gradients on this rank's half of the inputs."""
    with process_group(rank, folder):
        # Plain tuples cross the processes: this file is __main__ here, not in pytest.
        saved = torch.load(folder / "cases.pt", weights_only=False)
        results = {}
        for name, fields in saved.items():  # the same order on every rank: collectives pair
            case = Case(*fields)
            result = _run(case, [t.chunk(WORLD)[rank] for t in case.inputs])
            results[name] = (result.loss, result.grads)
        torch.save(results, folder / f"rank{rank}.pt")


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return _cases(_criteria())


@pytest.fixture(scope="module")
def outcomes(cases: dict[str, Case], module_folder: Path) -> dict[str, tuple[Result, list[Result]]]:
    """Per case: (the whole batch's result on this process, the WORLD workers' results)."""
    folder = module_folder
    fields = {name: (c.criterion, c.inputs, c.trainable, c.call) for name, c in cases.items()}
    torch.save(fields, folder / "cases.pt")
    run_workers(__file__, folder)
    assert not torch.distributed.is_initialized()  # the whole batch: one process, no gather
    results = [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    return {
        name: (_run(case, case.inputs), [Result(*r[name]) for r in results])
        for name, case in cases.items()
    }


# -- tests -------------------------------------------------------------------------------------
#: The losses that must be the whole batch's under DDP.
WHOLE_BATCH = list(GATHERING)


@pytest.mark.parametrize("name", WHOLE_BATCH)
def test_mean_loss_over_processes_is_the_whole_batch_loss(name: str, outcomes) -> None:
    whole, ranks = outcomes[name]
    mean = torch.stack([r.loss for r in ranks]).mean()
    torch.testing.assert_close(mean, whole.loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", WHOLE_BATCH)
def test_gradient_of_each_process_over_w_is_the_whole_batch_gradient(name: str, outcomes) -> None:
    whole, ranks = outcomes[name]
    for rank, result in enumerate(ranks):
        for i, (grad, whole_grad) in enumerate(zip(result.grads, whole.grads, strict=True)):
            if whole_grad is None:  # a location grid
                assert grad is None
                continue
            assert grad is not None
            assert whole_grad.abs().max() > 1e-4, f"input {i}: no gradient to compare"
            expected = whole_grad.chunk(WORLD)[rank]
            torch.testing.assert_close(
                grad / WORLD, expected, rtol=0, atol=1e-6, msg=f"input {i}, rank {rank}"
            )


def test_lightly_barlowtwins_loss_is_not_the_whole_batch_loss(outcomes) -> None:
    # Why sslbench has its own: on one process lightly's loss is the whole batch's...
    whole, ranks = outcomes["lightly_barlowtwins"]
    torch.testing.assert_close(whole.loss, outcomes["barlowtwins"][0].loss, rtol=1e-6, atol=0)
    # ...but split over two, each half is standardised with its own mean and std (here the
    # loss is 11% off the whole batch's).
    mean = torch.stack([r.loss for r in ranks]).mean()
    assert abs(mean - whole.loss) > 0.01 * whole.loss


@pytest.mark.parametrize("n, dim", [(16, 32), (8, 2048), (64, 128)])
@pytest.mark.parametrize("gather", [True, False])
def test_own_barlowtwins_loss_is_lightlys_on_one_process(n: int, dim: int, gather: bool) -> None:
    from lightly.loss import BarlowTwinsLoss as LightlyBarlowTwinsLoss

    from sslbench.nn.losses import BarlowTwinsLoss

    generator = torch.Generator().manual_seed(n + dim)
    z = [torch.randn(n, dim, generator=generator) * 2 + 1 for _ in range(2)]
    own = Case(BarlowTwinsLoss(5e-3, gather), z, [True, True], "pair")
    theirs = Case(LightlyBarlowTwinsLoss(5e-3, gather), z, [True, True], "pair")
    mine, lightly = _run(own, z), _run(theirs, z)
    # The same operations but for the diagonal's sum (lightly's sums a strided view, in a
    # different order): the losses may differ in the last bit, the gradients not at all.
    torch.testing.assert_close(mine.loss, lightly.loss, rtol=2e-7, atol=0)
    for grad, their_grad in zip(mine.grads, lightly.grads, strict=True):
        assert torch.equal(grad, their_grad)


def test_methods_gather_by_default(cases: dict[str, Case]) -> None:
    """The shipped YAML turns every gather on (statistics over every process)."""
    from sslbench.nn.losses import BarlowTwinsLoss, MoCoV3Loss

    assert cases["simclr"].criterion.gather_distributed
    assert cases["vicreg"].criterion.gather_distributed
    assert isinstance(cases["barlowtwins"].criterion, BarlowTwinsLoss)
    assert cases["barlowtwins"].criterion.gather_distributed
    assert cases["swav"].criterion.sinkhorn_gather_distributed
    vicregl = cases["vicregl"].criterion
    assert vicregl.gather_distributed and vicregl.vicreg_loss.gather_distributed  # global, local
    assert isinstance(cases["mocov3"].criterion, MoCoV3Loss)
    assert cases["mocov3"].criterion.gather_distributed


def test_gather_is_a_no_op_without_process_group(cases: dict[str, Case]) -> None:
    """Without torch.distributed initialised (one device), the losses with gather on compute
    exactly what they compute with it off, and do not fail."""
    assert not torch.distributed.is_initialized()
    off = _criteria(gather=False)
    for name, case in cases.items():
        if name == "lightly_barlowtwins":
            continue
        gathered = _run(case, case.inputs)
        local = _run(Case(off[name], case.inputs, case.trainable, case.call), case.inputs)
        assert torch.equal(gathered.loss, local.loss), name
        for grad, local_grad in zip(gathered.grads, local.grads, strict=True):
            assert (grad is None and local_grad is None) or torch.equal(grad, local_grad), name


if __name__ == "__main__":  # a worker of the `outcomes` fixture: --worker RANK FOLDER
    _worker(int(sys.argv[2]), Path(sys.argv[3]))
