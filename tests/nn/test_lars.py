"""sslbench.nn.optim.LARS: lightly's LARS step for step, without host-device syncs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightly.utils.lars import LARS as LightlyLARS
from torch import Tensor

from sslbench.nn.optim import LARS

STEPS = 5
#: name -> shape of the parameters each optimiser gets (the same values for both)
SHAPES = {
    "weight": (4, 3),  # ordinary: non-zero values and gradients
    "bias": (3,),
    "zeros": (5,),  # all zeros at first: no trust ratio, no decay until it moves
    "zero_grad": (2, 2),  # gradient all zeros at every step
    "flaky_grad": (3, 2),  # gradient all zeros at every other step
    "no_grad": (2,),  # grad None at every step: skipped, no state
    "late_grad": (2, 3),  # grad None for two steps, then present: buffer starts late
}


def make_params() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = {
        name: torch.nn.Parameter(torch.randn(shape, generator=gen))
        for name, shape in SHAPES.items()
    }
    with torch.no_grad():
        params["zeros"].zero_()
    return params


def gradients(step: int) -> dict[str, Tensor | None]:
    """The gradient of each parameter at ``step``: the same for both optimisers."""
    gen = torch.Generator().manual_seed(100 + step)
    grads: dict[str, Tensor | None] = {
        name: torch.randn(shape, generator=gen) for name, shape in SHAPES.items()
    }
    grads["zero_grad"] = torch.zeros(SHAPES["zero_grad"])
    if step % 2 == 0:
        grads["flaky_grad"] = torch.zeros(SHAPES["flaky_grad"])
    grads["no_grad"] = None
    if step < 2:
        grads["late_grad"] = None
    return grads


def param_groups(params: dict[str, Tensor], two_groups: bool) -> list[dict[str, Any]]:
    """One group of everything, or as build_optimizer with exclude_bias_and_norm: the
    matrices in one group, the vectors in a second with weight_decay 0."""
    if not two_groups:
        return [{"params": list(params.values())}]
    return [
        {"params": [p for p in params.values() if p.ndim > 1]},
        {"params": [p for p in params.values() if p.ndim <= 1], "weight_decay": 0.0},
    ]


def set_grads(params: dict[str, Tensor], step: int) -> None:
    for name, grad in gradients(step).items():
        params[name].grad = None if grad is None else grad.clone()


HYPER = {
    "sgd": {"momentum": 0.0, "weight_decay": 0.0},
    "momentum": {"momentum": 0.9, "weight_decay": 0.0},
    "nesterov_no_decay": {"momentum": 0.9, "weight_decay": 0.0, "nesterov": True},
    "decay": {"momentum": 0.0, "weight_decay": 1e-4},
    "momentum_decay": {"momentum": 0.9, "weight_decay": 1e-4},
    "nesterov_barlow": {"momentum": 0.9, "weight_decay": 1.5e-6, "nesterov": True},
    "dampening": {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-4},
    "strong_trust": {"momentum": 0.9, "weight_decay": 1e-2, "trust_coefficient": 0.1},
}


def step_both(opt: Any, ref: Any, ours: dict, theirs: dict, step: int) -> None:
    """The same gradients of ``step`` to both sides, then one step of each optimiser."""
    set_grads(ours, step)
    set_grads(theirs, step)
    opt.step()
    ref.step()


@pytest.mark.parametrize("two_groups", [False, True], ids=["one_group", "two_groups"])
@pytest.mark.parametrize("hyper", list(HYPER.values()), ids=list(HYPER))
def test_steps_equal_lightlys(hyper: dict[str, Any], two_groups: bool) -> None:
    ours, theirs = make_params(), make_params()
    opt = LARS(param_groups(ours, two_groups), lr=0.5, **hyper)
    ref = LightlyLARS(param_groups(theirs, two_groups), lr=0.5, **hyper)
    initial = {name: p.detach().clone() for name, p in ours.items()}
    for step in range(STEPS):
        step_both(opt, ref, ours, theirs, step)
        for name in SHAPES:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-8, msg=name)
            assert opt.state[ours[name]].keys() == ref.state[theirs[name]].keys(), name
            if "momentum_buffer" in ref.state[theirs[name]]:
                torch.testing.assert_close(
                    opt.state[ours[name]]["momentum_buffer"],
                    ref.state[theirs[name]]["momentum_buffer"],
                    rtol=1e-6,
                    atol=1e-8,
                    msg=name,
                )
    # The comparison is not vacuous: every parameter with a gradient moved.
    for name in SHAPES:
        moved = not torch.equal(ours[name], initial[name])
        assert moved == (name not in ("no_grad", "zero_grad")), name
    # Buffers exactly where lightly keeps them: none without momentum or without a gradient.
    buffered = {name for name in SHAPES if "momentum_buffer" in opt.state[ours[name]]}
    assert buffered == (set(SHAPES) - {"no_grad"} if hyper["momentum"] else set())


class HostSync(RuntimeError):
    pass


def _raise_host_sync(*args: Any, **kwargs: Any) -> Any:
    raise HostSync("a tensor was read on the host")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_step_reads_no_tensor_on_the_host(momentum: float, monkeypatch) -> None:
    """The ways a step could bring a value to the host (and so wait for a GPU) raise while
    the optimisers step: lightly's LARS trips them, ours does not."""

    def step_with_patches(optimizer: torch.optim.Optimizer) -> None:
        with monkeypatch.context() as patch:
            for attr in ("__bool__", "item", "__float__", "__int__", "__index__", "tolist"):
                patch.setattr(torch.Tensor, attr, _raise_host_sync)
            optimizer.step()

    ours, theirs = make_params(), make_params()
    opt = LARS(param_groups(ours, True), lr=0.5, momentum=momentum, weight_decay=1e-4)
    ref = LightlyLARS(param_groups(theirs, True), lr=0.5, momentum=momentum, weight_decay=1e-4)
    for step in range(3):
        set_grads(ours, step)
        set_grads(theirs, step)
        step_with_patches(opt)
        with pytest.raises(HostSync):
            step_with_patches(ref)
    assert bool(torch.tensor(1))  # the patches are gone again


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_cuda_synchronisation() -> None:
    params = {name: p.cuda() for name, p in make_params().items()}
    opt = LARS(param_groups(params, True), lr=0.5, momentum=0.9, weight_decay=1e-4)
    for step in range(3):
        for name, grad in gradients(step).items():
            params[name].grad = None if grad is None else grad.cuda()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_state_dict_interchanges_with_lightlys() -> None:
    """Same state keys ("momentum_buffer") and group options: a checkpoint of one resumes
    in the other."""
    ours, theirs = make_params(), make_params()
    opt = LARS(param_groups(ours, True), lr=0.5, momentum=0.9, weight_decay=1e-4)
    ref = LightlyLARS(param_groups(theirs, True), lr=0.5, momentum=0.9, weight_decay=1e-4)
    for step in range(3):
        set_grads(ours, step)
        opt.step()
    # a copy, as from a checkpoint file: loading keeps the very tensors where it can
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(ours[name])
    for step in range(3, STEPS):
        step_both(opt, ref, ours, theirs, step)
    for name in SHAPES:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-8, msg=name)
    fresh = LightlyLARS([torch.zeros(1)], lr=0.5, momentum=0.9, weight_decay=1e-4)
    assert opt.defaults == fresh.defaults


def test_build_optimizer_builds_sslbench_lars() -> None:
    from sslbench.nn.optim import build_optimizer

    params = make_params()
    optimizer = build_optimizer(
        "lars", param_groups(params, True), lr=0.2, momentum=0.9, weight_decay=1.5e-6
    )
    assert type(optimizer) is LARS
    weights, flat = optimizer.param_groups
    assert (weights["lr"], weights["momentum"], weights["weight_decay"]) == (0.2, 0.9, 1.5e-6)
    assert flat["weight_decay"] == 0.0 and not weights["nesterov"]
    assert weights["trust_coefficient"] == 0.001 and weights["eps"] == 1e-8


def test_closure_is_called_with_grad_and_its_loss_returned() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    opt = LARS([weight], lr=0.1, momentum=0.9, weight_decay=1e-4)
    calls: list[bool] = []

    def closure() -> Tensor:
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (weight * torch.arange(3.0)).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [True]
    assert isinstance(loss, Tensor) and loss.item() == 3.0
    assert not torch.equal(weight.detach(), torch.ones(3))
    assert opt.step() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -0.1},
        {"lr": 0.1, "momentum": -0.9},
        {"lr": 0.1, "weight_decay": -1e-4},
        {"lr": 0.1, "nesterov": True},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
    ],
    ids=["lr", "momentum", "weight_decay", "nesterov_without_momentum", "nesterov_dampening"],
)
def test_invalid_arguments_raise_like_lightlys(kwargs: dict[str, Any]) -> None:
    def message(make: Callable[[], Any]) -> str:
        with pytest.raises(ValueError) as info:
            make()
        return str(info.value)

    params = [torch.nn.Parameter(torch.zeros(2))]
    expected = message(lambda: LightlyLARS(params, **kwargs))
    assert message(lambda: LARS(params, **kwargs)) == expected
