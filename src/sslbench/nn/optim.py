"""Optimisers by name and their learning-rate schedules (linear warm-up, then cosine or
constant), and LARS without host-device synchronisation.

LARS (layer-wise adaptive rate scaling; You, Gitman and Ginsburg 2017, "Large Batch
Training of Convolutional Networks", https://arxiv.org/abs/1708.03888) is SGD in which each
parameter tensor's step is scaled by a trust ratio, the ratio of the tensor's norm to its
gradient's norm.

Why this module: lightly's :class:`lightly.utils.lars.LARS` decides per parameter whether to
apply the ratio with ``if p_norm != 0 and g_norm != 0`` on tensors, a Python ``bool`` of a
device tensor: the host waits for the GPU once per parameter per step (hundreds of stalls a
step for a ResNet). :class:`LARS` here has exactly lightly's semantics (same arguments,
defaults, validation, update and ``"momentum_buffer"`` state, so checkpoints look alike) but
takes that decision on the device with :func:`torch.where`; ``step`` never reads a tensor
on the host.

Semantics, per parameter ``p`` (any shape) with gradient ``g`` (same shape; parameters whose
``grad`` is None are skipped), for a group with ``lr``, ``momentum`` μ, ``dampening`` τ,
``weight_decay`` β, ``trust_coefficient`` η and ``eps`` ε:

* if β ≠ 0 and both ‖p‖ and ‖g‖ (2-norms over all elements) are non-zero::

      d = η · ‖p‖ / (‖g‖ + β‖p‖ + ε) · (g + β p)

  otherwise ``d = g``: a group with β = 0 is plain SGD (how biases and norm weights are
  excluded from the scaling, as in SimCLR, BYOL and Barlow Twins), and a zero parameter or
  gradient gets neither the ratio nor the weight decay;
* with μ ≠ 0: ``buf = clone(d)`` on the first step, then ``buf = μ buf + (1 - τ) d``;
  the step uses ``d + μ buf`` with Nesterov, else ``buf``;
* ``p -= lr · step``.

Usage::

    from sslbench.nn.optim import LARS

    model = torch.nn.Linear(10, 1)
    optimizer = LARS(
        [
            {"params": [model.weight]},
            {"params": [model.bias], "weight_decay": 0.0},  # no scaling, no decay
        ],
        lr=0.2,
        momentum=0.9,
        weight_decay=1.5e-6,
    )
    optimizer.zero_grad()
    model(torch.randn(8, 10)).square().mean().backward()
    optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """SGD with LARS scaling, lightly's semantics without host syncs (see the module docstring).

    Args:
        params: parameters to optimise, or dicts defining parameter groups.
        lr: learning rate.
        momentum: momentum factor μ.
        dampening: dampening τ of the momentum.
        weight_decay: weight decay β (L2 penalty); 0 turns the trust ratio off for the group.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        trust_coefficient: η, scales the trust ratio.
        eps: ε, added to the ratio's denominator.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimisation step; returns ``closure()`` (evaluated with grad on) or None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
        weight_decay: float = group["weight_decay"]
        momentum: float = group["momentum"]

        # Directions d: the gradients, LARS-scaled (with weight decay) where β ≠ 0.
        directions = grads
        if weight_decay != 0:
            p_norms = torch._foreach_norm(params)
            g_norms = torch._foreach_norm(grads)
            # η ‖p‖ / (‖g‖ + β‖p‖ + ε), as 0-dim tensors on each parameter's device
            denominators = torch._foreach_mul(p_norms, weight_decay)
            torch._foreach_add_(denominators, g_norms)
            torch._foreach_add_(denominators, group["eps"])
            ratios = torch._foreach_div(p_norms, denominators)
            torch._foreach_mul_(ratios, group["trust_coefficient"])
            decayed = torch._foreach_add(grads, params, alpha=weight_decay)
            directions = [
                # where either norm is 0 lightly applies neither the ratio nor the decay
                torch.where((p_norm != 0) & (g_norm != 0), d * ratio, g)
                for d, ratio, g, p_norm, g_norm in zip(
                    decayed, ratios, grads, p_norms, g_norms, strict=True
                )
            ]

        steps = directions
        if momentum != 0:
            buffers: list[Tensor] = []
            old_buffers: list[Tensor] = []  # buffers from earlier steps, to update
            old_directions: list[Tensor] = []
            for p, d in zip(params, directions, strict=True):
                state = self.state[p]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = state["momentum_buffer"] = torch.clone(d).detach()
                else:
                    old_buffers.append(buffer)
                    old_directions.append(d)
                buffers.append(buffer)
            if old_buffers:
                torch._foreach_mul_(old_buffers, momentum)
                torch._foreach_add_(old_buffers, old_directions, alpha=1 - group["dampening"])
            if group["nesterov"]:
                steps = torch._foreach_add(directions, buffers, alpha=momentum)
            else:
                steps = buffers

        torch._foreach_add_(params, steps, alpha=-group["lr"])


OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
SCHEDULES = ("cosine", "constant")


def build_optimizer(
    name: str,
    params: Any,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    betas: Sequence[float] | None = None,
) -> torch.optim.Optimizer:
    """SGD, Adam, AdamW or LARS (:class:`LARS`: lightly's, without host syncs)
    by name; ``betas`` for Adam and AdamW (None: torch's (0.9, 0.999))."""
    adam = {} if betas is None else {"betas": (float(betas[0]), float(betas[1]))}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **adam)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adam)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")


def lr_schedule(name: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at each step of the schedule (an optimiser step or an epoch):
    linear warm-up, then cosine to 0 (or constant)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; valid: {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
