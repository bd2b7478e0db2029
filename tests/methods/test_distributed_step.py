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
streams). One pair of worker processes (this file run as a script) steps every method, one
file per method; a module-scoped fixture steps each on the whole batch and keeps only the
comparison (all the parameters together would be GBs).

Every other registered method (:data:`SLOW_METHODS`, from sslbench.methods.METHODS) gets the
same comparison in the slow suite, from a second pair of workers that steps them all (so the
quick suite keeps its three methods and its one pair). What differs per method:

* views: the method's layout, ``num_global_views`` global views and its small_overrides'
  local views (side ``local_views.size_ratio`` times SIZE), coordinate maps for VICRegL,
  class labels for ``supervised`` (its per-sample cross-entropy); each image with its own
  contrast, colour and noise level between views (see :func:`_views`), and a few settings
  (:data:`EXTRA_OVERRIDES`) under which the batch's share in the loss shows in one step;
* the step direction: SGD's and LARS's momentum buffer, Adam's first moment ``exp_avg``
  ((1 − β1) times the gradient; Adam's first update is about lr · sign(g), which says little
  about g); parameters with ``requires_grad`` False (EMA targets, which move in
  ``loss_of_views``, not in ``training_loss``; DINO's fixed weight-norm scale) are left out;
* the state a step moves besides the parameters (:data:`MOVING_STATE`): memory banks
  (MoCo v2's, NNCLR's support set, SMoG's), DINO's centre, TiCo's running covariance C and
  SMoG's group features must be the whole batch's on both processes after the step;
* the "local" variant (the method's gather key set false: ``gather_distributed``, or SwAV's
  ``sinkhorn_gather_distributed``) exists only where the method has such a key; the
  per-sample methods (SimSiam, BYOL, FastSiam, supervised) and DINO (its centre is always
  all-reduced) have none. Their DDP step must still equal the whole batch's: that checks
  DDP's gradient average and the lr scaling;
* MoCo v2 shuffles its keys' batch across the processes (only with more than one): with
  batch norm in eval mode the keys, and the step, must still be the whole batch's."""

from __future__ import annotations

import copy
import dataclasses
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

#: The methods whose DDP step is compared with the whole batch's in the quick suite, built
#: with their classes' small_overrides (the step is the same computation at any width).
METHODS = ("simclr", "barlowtwins", "vicreg")


def _registered() -> list[str]:
    from sslbench.methods import METHODS as REGISTRY

    return list(REGISTRY)


#: Registered methods left out of the comparison, with the reason. Those whose loss is per
#: sample (SimSiam, BYOL, FastSiam, supervised) stay in, since their DDP step still depends
#: on DDP's gradient average and on the lr scaling. The masked methods are out: each process
#: draws its masks from its own rank's stream, as it draws its views, so no DDP step can equal
#: the whole batch's on fixed views.
MASKED = "token masks drawn per process from rank-seeded generators"
EXCLUDED: dict[str, str] = {
    "mae": MASKED, "simmim": MASKED, "ijepa": MASKED, "ibot": MASKED,
    "msn": f"{MASKED}; lightly's me-max term is each process's own",
}  # fmt: skip

#: The other registered methods, compared in the slow suite (one more pair of workers).
SLOW_METHODS = tuple(n for n in _registered() if n not in METHODS and n not in EXCLUDED)


def _local_override(name: str) -> str | None:
    """The override that makes the method's loss (and banks) each process's own, or None
    where its YAML has no gather key. Read from the YAML: this runs at collection."""
    from omegaconf import OmegaConf

    import sslbench

    conf = OmegaConf.load(Path(sslbench.__file__).parent / "conf" / "method" / f"{name}.yaml")
    # SwAV's Sinkhorn-Knopp codes: balanced over the global batch or over each process's.
    for key in ("gather_distributed", "sinkhorn_gather_distributed"):
        if key in conf:
            return f"method.{key}=false"
    return None


LOCAL_OVERRIDES = {n: _local_override(n) for n in (*METHODS, *SLOW_METHODS)}
VARIANTS = ("gathered", "local")  # the gather key true (the YAML's) / false

#: Overrides beside a method's small_overrides.
EXTRA_OVERRIDES = {
    # the class count, which a run reads from its data set
    "supervised": ("method.num_classes=4",),
    # The groups move by (1 - beta) of the batch's mean embeddings: at the YAML's 0.99 the
    # step barely sees the batch's share in them (the local variant's step is 6e-4 off the
    # whole batch's, measured), at 0.5 clearly (3e-2).
    "smog": ("method.beta=0.5",),
    # The weights w_i = 2 - N softmax_i(sim(z_i, z'_i) / sigma) of the positive pairs: at
    # initialisation the pairs' similarities are alike, and at the YAML's sigma 0.5 every
    # weight is about 1, normalised over the global batch or over each process's rows
    # (lightly's DCLWLoss: its step is 5e-5 off the whole batch's here, measured, within the
    # tolerance); at 0.02 the weights differ, and lightly's per-process ones put the step
    # 1.6e-3 off (sslbench's global ones: 2e-6).
    "simclr_dclw": ("method.sigma=0.02",),
    # its queue in use at this first step (from epoch 15 in the YAML: never here), which is
    # what sets it apart from swav
    "swav_queue": ("method.queue_start_epoch=0",),
}

#: How far a DDP step's direction may be from the whole batch's, relative to it.
DIRECTION_RTOL = 1e-4

#: The state besides the parameters that one step moves (buffers, and what
#: ``extra_checkpoint_state`` adds: TiCo's C), per method; every other method's step moves
#: none. The test checks both that exactly these move and that they are the whole batch's.
MOVING_STATE: dict[str, set[str]] = {
    # NTXentLoss's bank: the keys of both calls (symmetric loss), 2N rows
    "mocov2": {"criterion.memory_bank.bank", "criterion.memory_bank.bank_ptr"},
    "nnclr": {"memory_bank.bank", "memory_bank.bank_ptr"},  # the support set, z1 of the batch
    "dino": {"criterion.center"},  # the teacher outputs' running mean, all-reduced
    "tico": {"criterion.C"},  # the running covariance (None before the first step)
    "smog": {"groups.group_features", "memory_bank.bank", "memory_bank.bank_ptr"},
    # one queue per global view (small_overrides: queue_length=64), filled from epoch 0
    "swav": {f"queues.{i}.{b}" for i in (0, 1) for b in ("bank", "bank_ptr")},
    "swav_queue": {f"queues.{i}.{b}" for i in (0, 1) for b in ("bank", "bank_ptr")},
}

#: How far the local variant's step must at least be from the whole batch's (100 times the
#: tolerance of the gathered one unless said here).
LOCAL_MIN_ERROR: dict[str, float] = {
    # At initialisation SwAV's projections of the images are alike, so Sinkhorn's codes
    # over half the batch differ less from those over the whole than other losses do:
    # 7e-3 measured, still four orders of magnitude above the gathered step's 1e-7.
    "swav": 10 * DIRECTION_RTOL,
    # NNCLR's positives are support-set neighbours, the same few for images that a random
    # network embeds alike; the batch enters only through NT-Xent's negatives: 1.4e-2
    # measured, close to the default.
    "nnclr": 10 * DIRECTION_RTOL,
}

#: Heads whose last linear layer's bias gets a gradient of 0 in exact arithmetic (see
#: :func:`_shift_invariant`).
SHIFT_INVARIANT_HEADS: dict[str, tuple[str, ...]] = {
    "barlowtwins": ("projection_head",),
    "vicreg": ("projection_head",),
    # the global loss is VICReg's; the local one is VICReg on matched cells, matched by
    # feature distance or location, neither moved by a constant
    "vicregl": ("projection_head", "local_projection_head"),
}


def _build(name: str, local: bool) -> nn.Module:
    from conftest import small_method

    off = [LOCAL_OVERRIDES[name]] if local else []
    # batch_size: the global batch, on every process, as `sslbench pretrain` passes it
    return small_method(name, f"batch_size={N}", *EXTRA_OVERRIDES.get(name, ()), *off)[0]


def _views(method: nn.Module):
    """The fixed global batch's views in the method's layout: ``num_global_views`` correlated
    global views, its local views (downsampled view 0 plus noise), coordinate maps if it
    needs them, class labels if it has classes."""
    from sslbench.methods.base import Views
    from sslbench.transforms.crops import box_coordinates

    generator = torch.Generator().manual_seed(0)
    v0 = torch.randn(N, 3, SIZE, SIZE, generator=generator)
    noise: float | Tensor = 0.5  # of the other views
    if method.method_cfg["name"] not in METHODS:
        # Each image its own contrast and colour, and its own noise between views: a random
        # network embeds images of plain noise alike, and where the batch enters the loss
        # only through its spread (SwAV's Sinkhorn codes, SMoG's groups, DCLW's weights of
        # the positive pairs) half a batch then behaves almost as the whole (SwAV's and
        # SMoG's local variants 1e-3 and 3e-4 off the whole batch's step, measured). Drawn
        # from a generator of their own, so the quick suite's views stay as they were.
        spread = torch.Generator().manual_seed(1)
        contrast = 0.5 + torch.rand(N, 1, 1, 1, generator=spread)
        v0 = v0 * contrast + torch.randn(N, 3, 1, 1, generator=spread)
        noise = 0.1 + 1.9 * torch.rand(N, 1, 1, 1, generator=spread)
    views = Views(global_views=[v0], local_views=[])
    for _ in range(method.num_global_views - 1):
        views.global_views.append(v0 + noise * torch.randn(N, 3, SIZE, SIZE, generator=generator))
    if method.local_pipeline is not None:
        side = method.local_pipeline.size
        small = nn.functional.interpolate(v0, size=(side, side), mode="bilinear")
        views.local_views = [
            small + 0.5 * torch.randn(N, 3, side, side, generator=generator)
            for _ in range(method.num_local_views)
        ]
    if method.needs_coordinates:

        def coords(view: Tensor) -> Tensor:
            # a random crop box (x0, y0, x1, y1) per image, a third to a half of its side
            corner = 0.5 * torch.rand(N, 2, generator=generator)
            side = 0.3 + 0.2 * torch.rand(N, 1, generator=generator)
            boxes = torch.cat((corner, corner + side), 1)
            return box_coordinates(boxes, torch.ones(N), view.shape[-1])

        views.global_coords = [coords(v) for v in views.global_views]
        views.local_coords = [coords(v) for v in views.local_views]
    classes = method.method_cfg.get("num_classes")
    if classes:
        views.class_labels = torch.randint(0, classes, (N,), generator=generator)
    return views


def _shard(views, rank: int):
    """Process ``rank``'s rows of every tensor of ``views``."""

    def part(tensors):
        return None if tensors is None else [t.chunk(WORLD)[rank] for t in tensors]

    labels = views.class_labels
    return dataclasses.replace(
        views,
        global_views=part(views.global_views),
        local_views=part(views.local_views),
        global_coords=part(views.global_coords),
        local_coords=part(views.local_coords),
        class_labels=None if labels is None else labels.chunk(WORLD)[rank],
    )


class _Loss(nn.Module):
    """The method's training loss as ``forward``: what DDP wraps (Lightning's wrapper of a
    LightningModule calls ``training_step`` from its ``forward`` in the same way)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views) -> Tensor:
        return self.method.training_loss(views)


class Step(NamedTuple):
    """What one optimiser step left: the trained parameters after it, each one's step
    direction (the momentum buffer after a first step: the parameter moved by lr times it;
    Adam's first moment), the loss, the lr, and the state besides the parameters."""

    params: dict[str, Tensor]
    directions: dict[str, Tensor]
    loss: Tensor
    lr: float
    state: dict[str, Tensor]


def _trained(method: nn.Module) -> dict[str, Tensor]:
    """The parameters the optimiser moves (EMA targets and other frozen ones left out)."""
    return {n: p for n, p in method.named_parameters() if p.requires_grad}


def _state(method: nn.Module) -> dict[str, Tensor]:
    """Every buffer (banks, centres, group features, batch norm's statistics) and what a
    checkpoint keeps beside the state_dict (banks, TiCo's C), copied. Not the buffers of
    banks of size 0 (NTXentLoss's without a bank): they hold uninitialised memory."""
    from lightly.models.modules.memory_bank import MemoryBankModule

    empty = tuple(
        f"{n}."
        for n, m in method.named_modules()
        if isinstance(m, MemoryBankModule) and m.size[0] == 0
    )
    state = {n: b.detach().clone() for n, b in method.named_buffers() if not n.startswith(empty)}
    state.update({n: t.detach().clone() for n, t in method.extra_checkpoint_state().items()})
    return state


def _direction(optimizer: torch.optim.Optimizer, p: Tensor) -> Tensor:
    state = optimizer.state[p]
    # SGD and LARS: the momentum buffer. Adam: the first moment, (1 - beta1) times the
    # gradient (with Adam's L2 weight decay in it).
    return (state["momentum_buffer"] if "momentum_buffer" in state else state["exp_avg"]).clone()


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
    named = _trained(method)
    return (
        {n: p.detach().clone() for n, p in named.items()},
        {n: _direction(optimizer, p) for n, p in named.items()},
        loss.detach(),
        optimizer.param_groups[0]["lr"],
        _state(method),
    )


def _worker(rank: int, folder: Path) -> None:
    """One DDP process: each method's step, in each of its variants, on this rank's half."""
    with process_group(rank, folder):
        for name in torch.load(folder / "names.pt"):  # the same order on every rank
            saved = torch.load(folder / f"{name}.pt", weights_only=False)
            views = _shard(saved["views"], rank)
            results = {v: _step(m, views, ddp=True) for v, m in saved["variants"].items()}
            torch.save(results, folder / f"{name}.rank{rank}.pt")


# -- fixtures ----------------------------------------------------------------------------------
def _run_steps(names, folder: Path, timeout: float) -> dict[str, dict]:
    """Build each method (and its local variant), let the workers step them, step each on
    the whole batch here, and compare (:func:`_compare`). One file per method, read one at a
    time: all of them together hold GBs of parameters."""
    folder.mkdir(exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initial weights every run
        for name in names:
            gathered = _build(name, local=False)
            variants = {"gathered": gathered}
            if LOCAL_OVERRIDES[name] is not None:
                local = variants["local"] = _build(name, local=True)
                local.load_state_dict(gathered.state_dict())  # the same initial weights
                # and banks (not in the state_dict)
                local.load_extra_checkpoint_state(gathered.extra_checkpoint_state())
            torch.save({"variants": variants, "views": _views(gathered)}, folder / f"{name}.pt")
    torch.save(list(names), folder / "names.pt")
    run_workers(__file__, folder, timeout=timeout)
    assert not torch.distributed.is_initialized()  # the whole batch: one process, no gather
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: the steps are too small to gain from more
    try:
        return {name: _compare(name, folder) for name in names}
    finally:
        torch.set_num_threads(threads)


def _compare(name: str, folder: Path) -> dict:
    """Method ``name``'s step on the whole batch against the workers' steps: ``whole`` (its
    lr and loss), ``unchanged`` (trained parameters the step did not move), ``moved`` (state
    entries it moved), ``exempt`` (:func:`_shift_invariant`), ``optimizer`` (its config), and
    per variant one :func:`_against` dict per process."""
    saved = torch.load(folder / f"{name}.pt", weights_only=False)
    method = saved["variants"]["gathered"]
    before, state_before = _trained(method), _state(method)
    whole = Step(*_step(copy.deepcopy(method), saved["views"], ddp=False))
    exempt = _shift_invariant(name, method)
    out = {
        "whole": {"lr": whole.lr, "loss": float(whole.loss.reshape(()))},
        "unchanged": [n for n, p in whole.params.items() if torch.equal(p, before[n])],
        "moved": {
            k
            for k, v in whole.state.items()
            if k not in state_before or not torch.equal(v, state_before[k])
        },
        "exempt": exempt,
        "optimizer": method.method_cfg["optimizer"],
    }
    for variant in saved["variants"]:
        steps = [
            Step(*torch.load(folder / f"{name}.rank{rank}.pt", weights_only=False)[variant])
            for rank in range(WORLD)
        ]
        out[variant] = [_against(s, whole, steps[0], exempt) for s in steps]
    return out


def _against(step: Step, whole: Step, first: Step, exempt: set[str]) -> dict:
    """One process's step against the whole batch's (and the first process's): its lr and
    loss (lightly's SwAV and VICRegL losses have shape (1,)), ``error`` (:func:`_error` over
    the parameters not ``exempt``), ``errors`` (per parameter tensor), ``params_off``
    (parameters not within atol 1e-5, rtol 1e-4 of the whole batch's), ``state_off`` (state
    entries not within them), ``same_as_first`` (parameters equal to the first process's)."""
    compared = [n for n in whole.params if n not in exempt]
    return {
        "lr": step.lr,
        "loss": float(step.loss.reshape(())),
        "error": _error(step, whole, compared),
        "errors": {n: _error(step, whole, [n]) for n in compared},
        "params_off": [n for n, p in step.params.items() if not _close(p, whole.params[n])],
        "state_off": sorted(
            k for k, v in whole.state.items() if k not in step.state or not _close(step.state[k], v)
        ),
        "same_as_first": all(torch.equal(p, first.params[n]) for n, p in step.params.items()),
    }


@pytest.fixture(scope="module")
def steps(module_folder: Path) -> dict[str, dict]:
    """:func:`_run_steps` of the quick suite's METHODS."""
    return _run_steps(METHODS, module_folder / "quick", timeout=180)


@pytest.fixture(scope="module")
def slow_steps(module_folder: Path) -> dict[str, dict]:
    """:func:`_run_steps` of SLOW_METHODS: one more pair of workers for all of them."""
    return _run_steps(SLOW_METHODS, module_folder / "slow", timeout=600)


@pytest.fixture
def step_of(request):
    """``step_of(name)``: method ``name``'s entry of ``steps`` or ``slow_steps``."""

    def get(name: str) -> dict:
        return request.getfixturevalue("steps" if name in METHODS else "slow_steps")[name]

    return get


def _params(names, test: str = "") -> list:
    """``names`` as the parameters of ``test``: those outside the quick suite's METHODS
    marked slow."""
    params = []
    for name in names:
        marks = [] if name in METHODS else [pytest.mark.slow]
        params.append(pytest.param(name, marks=marks))
    return params


ALL = (*METHODS, *SLOW_METHODS)
WITH_LOCAL = [n for n in ALL if LOCAL_OVERRIDES[n] is not None]


def _shift_invariant(name: str, method: nn.Module) -> set[str]:
    """The parameters whose gradient is 0 in exact arithmetic: Barlow Twins', VICReg's and
    VICRegL's losses do not change when a constant is added to the embeddings (they
    standardise or centre them, and VICReg's invariance term takes a difference of two
    views), so the last layer's bias gets only rounding noise, which LARS's trust ratio even
    magnifies. Their steps are compared with the parameters, not with the relative tolerance
    below."""
    exempt = set()
    for head in SHIFT_INVARIANT_HEADS.get(name, ()):
        last = [m for m in getattr(method, head).modules() if isinstance(m, nn.Linear)][-1]
        exempt |= {n for n, p in method.named_parameters() if p is last.bias}
    return exempt


def _error(step: Step, whole: Step, names) -> float:
    """‖step direction − the whole batch's‖ / ‖the whole batch's‖ over parameters ``names``."""
    diff = sum(((step.directions[n] - whole.directions[n]) ** 2).sum() for n in names)
    norm = sum((whole.directions[n] ** 2).sum() for n in names)
    return float((diff / norm).sqrt())


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal (integers: bank pointers), or within atol 1e-5, rtol 1e-4."""
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# -- tests -------------------------------------------------------------------------------------
def test_every_registered_method_is_compared_or_excluded() -> None:
    """(and the quick suite's methods are registered ones)"""
    assert sorted((*METHODS, *SLOW_METHODS, *EXCLUDED)) == sorted(_registered())


@pytest.mark.parametrize("name", _params(ALL, "step"))
def test_ddp_step_is_the_whole_batch_step(name: str, step_of) -> None:
    step = step_of(name)
    whole = step["whole"]
    # the last bias was found where it is one
    assert len(step["exempt"]) == len(SHIFT_INVARIANT_HEADS.get(name, ()))
    # The step moves every parameter (else there is nothing to compare).
    assert step["unchanged"] == [], "did not change"
    for rank, ddp in enumerate(step["gathered"]):
        assert ddp["lr"] == whole["lr"], "the lr follows the global batch, not the per-process one"
        assert ddp["params_off"] == [], f"rank {rank}: parameters off the whole batch's"
        error = ddp["error"]
        assert error < DIRECTION_RTOL, f"rank {rank}: step {error:.1e} off the whole batch's"
        # and every parameter tensor's step on its own
        off = {n: e for n, e in ddp["errors"].items() if e >= 10 * DIRECTION_RTOL}
        assert off == {}, f"rank {rank}"
    # Each process's loss is its rows' share of the whole batch's loss.
    mean = sum(ddp["loss"] for ddp in step["gathered"]) / WORLD
    assert mean == pytest.approx(whole["loss"], rel=1e-5, abs=0)


@pytest.mark.parametrize("name", _params(ALL, "state"))
def test_state_after_the_ddp_step_is_the_whole_batch_state(name: str, step_of) -> None:
    """Banks, centres, group features, TiCo's C: on every process what one process holds
    after the whole batch's step (updated with the global batch)."""
    step = step_of(name)
    assert step["moved"] == MOVING_STATE.get(name, set())
    for rank, ddp in enumerate(step["gathered"]):
        assert ddp["state_off"] == [], f"rank {rank}: state off the whole batch's"


@pytest.mark.parametrize("name", _params(WITH_LOCAL))
def test_ddp_step_of_local_losses_is_not_the_whole_batch_step(name: str, step_of) -> None:
    """The gather key false: each process's loss sees only its half, and the step differs
    from the whole batch's by far more than the tolerance above (10-40% here), and so does
    every state entry the step moves (each process's bank takes its own rows only), but
    SwAV's queues: they take the global batch whatever Sinkhorn gathers (every process
    scores its share of one queue)."""
    step = step_of(name)
    least = LOCAL_MIN_ERROR.get(name, 100 * DIRECTION_RTOL)
    global_queues = name.startswith("swav")
    local_state = set() if global_queues else MOVING_STATE.get(name, set())
    for ddp in step["local"]:
        assert ddp["error"] > least
        assert local_state <= set(ddp["state_off"])
        if global_queues:
            assert ddp["state_off"] == []


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        pytest.param(n, v, marks=() if n in METHODS else pytest.mark.slow)
        for n in ALL
        for v in VARIANTS
        if v == "gathered" or LOCAL_OVERRIDES[n] is not None
    ],
)
def test_processes_hold_the_same_parameters_after_the_step(name: str, variant: str, step_of):
    """DDP's averaged gradients keep the replicas equal (gathered or not)."""
    assert all(ddp["same_as_first"] for ddp in step_of(name)[variant])


@pytest.mark.parametrize("name", _params(ALL))
def test_lr_is_scaled_by_the_global_batch(name: str, step_of) -> None:
    """The first step's lr: the YAML's times global batch / reference batch (where it has
    one; SimSiam's, FastSiam's and SMoG's are not scaled), times the warm-up's first factor
    (VICReg warms up over 20 epochs, 200 steps of the stand-in)."""
    step = step_of(name)
    opt = step["optimizer"]
    warmup = int(opt["warmup_epochs"] * 10)
    reference = opt["reference_batch_size"]
    expected = opt["lr"] * (N / reference if reference else 1.0) / max(1, warmup)
    assert step["whole"]["lr"] == pytest.approx(expected)
    assert all(ddp["lr"] == step["whole"]["lr"] for ddp in step["gathered"])


if __name__ == "__main__":  # a worker of the `steps` fixture: --worker RANK FOLDER
    _worker(int(sys.argv[2]), Path(sys.argv[3]))
