"""An EMA target network, shared by the methods that bootstrap from one (BYOL; MoCo v3 and
DINO will): the online → target pairs, the momentum schedule and the no-grad update.

A method subclasses :class:`EMATargetMethod`, builds its online modules, then calls
:meth:`~EMATargetMethod.add_target` for each module that has a target. Each target is an
attribute ``NAME_target`` of the method (so checkpoints keep the keys ``backbone_target.*``
...), a copy of the online module with ``requires_grad`` False: the optimiser never sees it.
Once per training step, before the forward pass (lightly's order; the papers update after
the optimiser step, the same sequence shifted by one step), every target moves towards its
online module: target ← m · target + (1 − m) · online.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from sslbench.methods.base import SSLMethod, Views


class EMATargetMethod(SSLMethod):
    """An SSL method with EMA targets of some of its modules.

    Method keys: momentum, momentum_end (null: constant ``momentum``; a float: cosine from
    ``momentum`` to it over all optimiser steps, BYOL's schedule).
    """

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.momentum = float(method["momentum"])
        end = method["momentum_end"]
        self.momentum_end = None if end is None else float(end)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"method.momentum must be in [0, 1], got {self.momentum}")
        if self.momentum_end is not None and not self.momentum <= self.momentum_end <= 1.0:
            raise ValueError(
                f"method.momentum_end must be null or in [momentum, 1] = "
                f"[{self.momentum}, 1], got {self.momentum_end}"
            )
        #: (online, target) attribute names, in update order. Names, not modules: the
        #: modules are registered once, as the method's own attributes.
        self.ema_pairs: list[tuple[str, str]] = []
        # Optimiser steps of the whole run, for the cosine schedule; set when training starts.
        self.total_steps = 1

    def add_target(self, online: str) -> nn.Module:
        """Register ``{online}_target``, an exact copy of the module ``online`` (BYOL paper,
        Algorithm 1) that gradients never reach, and return it.

        Call it in the order the targets should be registered: the order of the method's
        modules is that of its checkpoint's keys and of its parameters.
        """
        target_name = f"{online}_target"
        target = copy.deepcopy(getattr(self, online))
        deactivate_requires_grad(target)
        setattr(self, target_name, target)
        self.ema_pairs.append((online, target_name))
        return target

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The EMA momentum at optimiser step ``step`` of ``total_steps``: constant, or the
        paper's cosine schedule from m = momentum to e = momentum_end (1 in the paper):
        e − (e − m)·(cos(π·step/(total_steps − 1)) + 1)/2, lightly's cosine_schedule."""
        if self.momentum_end is None:
            return self.momentum
        return cosine_schedule(step, total_steps, self.momentum, self.momentum_end)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target ← momentum · target + (1 − momentum) · online, for every parameter.

        Batch-norm running statistics are buffers, not parameters: the target keeps its own,
        from its forward passes in training mode (as in lightly); evaluation never uses them.
        """
        for online, target in self.ema_pairs:
            update_momentum(getattr(self, online), getattr(self, target), m=momentum)

    @torch.no_grad()
    def reset_targets(self) -> None:
        """Every target ← an exact copy of its online module, parameters and buffers (batch
        norm's running statistics) alike: what :meth:`add_target` made at the start. Copied
        in place, so that the optimiser, DDP and the checkpoint keep the same tensors (SMoG
        resets its target so every few hundred steps)."""
        for online, target in self.ema_pairs:
            source, copy_ = getattr(self, online), getattr(self, target)
            pairs = zip(
                [*source.named_parameters(), *source.named_buffers()],
                [*copy_.named_parameters(), *copy_.named_buffers()],
                strict=True,
            )
            for (name, value), (target_name, target_value) in pairs:
                if name != target_name:
                    raise RuntimeError(f"{target}.{target_name} is no copy of {online}.{name}")
                target_value.copy_(value)

    def on_train_start(self) -> None:
        super().on_train_start()
        # Known only once the Trainer has its data: every optimiser step of every epoch.
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def loss_of_views(self, views: Views) -> Tensor:
        # The EMA update comes before the forward pass, once per step (lightly's order): the
        # target used below already includes the online network's last optimiser step.
        momentum = self.momentum_at(self.global_step, self.total_steps)
        self.update_target(momentum)
        self.log("target_momentum", momentum, on_step=True, on_epoch=False)
        return super().loss_of_views(views)
