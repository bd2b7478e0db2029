"""A method's optimiser as its YAML's ``optimizer`` section describes it: the optimiser by
name with the lr scaled to the batch, biases and norms optionally undecayed, a linear
warm-up then a cosine (per step or per epoch), and the ViT recipes' parts: a cosine
weight-decay schedule and gradient clipping (over all parameters, or each tensor on its
own as DINO and iBOT clip). :class:`SSLMethod` inherits it; Lightning calls the hooks.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from sslbench.nn.optim import build_optimizer, lr_schedule


class OptimizerRecipe(pl.LightningModule):
    """The optimiser, schedules and clipping of ``self.method_cfg["optimizer"]`` for a module
    trained at global batch ``self.batch_size`` (both set by :class:`SSLMethod`)."""

    method_cfg: dict[str, Any]
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (known once the Trainer is attached)."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return max(1, total // max(1, self.trainer.max_epochs or 1))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        end = self.method_cfg["optimizer"].get("weight_decay_end")
        if end is not None:
            set_weight_decay(self.optimizers(use_pl_optimizer=False), self._decay_at(float(end)))

    def _decay_at(self, end: float) -> float:
        """The weight decay of this optimiser step: a cosine from the YAML's weight_decay to
        ``end`` over all steps (DINO's cosine_scheduler for the weight decay)."""
        start = float(self.method_cfg["optimizer"].get("weight_decay", 0.0))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        progress = min(1.0, self.global_step / max(1, total - 1))
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:  # fmt: skip
        # The method's own clipping (method.optimizer.grad_clip), not the Trainer's.
        opt_cfg = self.method_cfg["optimizer"]
        clip = opt_cfg.get("grad_clip")
        if clip is None:
            return
        mode = opt_cfg.get("grad_clip_mode", "total")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if mode == "total":
            nn.utils.clip_grad_norm_(params, float(clip))
        elif mode == "per_tensor":
            grads = [p.grad for p in params if p.grad is not None]
            norms = torch._foreach_norm(grads)
            # each gradient scaled by min(1, clip / (‖g‖ + 1e-6)), on the device
            scales = [(float(clip) / (n + 1e-6)).clamp(max=1.0) for n in norms]
            torch._foreach_mul_(grads, scales)
        else:  # config.validate refuses other modes
            raise ValueError(f"unknown method.optimizer.grad_clip_mode '{mode}'")

    def configure_optimizers(self) -> Any:
        opt_cfg = self.method_cfg["optimizer"]
        reference = opt_cfg.get("reference_batch_size")
        lr = opt_cfg["lr"] * (self.batch_size / reference if reference else 1.0)
        # Frozen parts (momentum targets, ...) have requires_grad False: not optimised.
        trainable = [p for p in self.parameters() if p.requires_grad]
        if opt_cfg.get("exclude_bias_and_norm", False):
            params: Any = [
                {"params": [p for p in trainable if p.ndim > 1]},
                # lightly's LARS skips its trust ratio where weight_decay is 0
                {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
            ]  # fmt: skip
        else:
            params = trainable
        optimizer = build_optimizer(
            opt_cfg["name"],
            params,
            lr=lr,
            momentum=opt_cfg.get("momentum", 0.0),
            weight_decay=opt_cfg.get("weight_decay", 0.0),
            betas=opt_cfg.get("betas"),
        )
        interval = opt_cfg.get("schedule_interval", "step")
        warmup_epochs = opt_cfg.get("warmup_epochs", 0.0)
        if interval == "step":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = int(warmup_epochs * self.steps_per_epoch)
        elif interval == "epoch":  # lightly's benchmark: its scheduler steps once per epoch
            total, warmup = max(1, int(self.trainer.max_epochs or 1)), int(warmup_epochs)
        else:
            raise ValueError(
                f"unknown method.optimizer.schedule_interval '{interval}'; valid: step, epoch"
            )
        schedule = lr_schedule(opt_cfg.get("schedule", "cosine"), total, warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Give every parameter group that decays (biases and norms excluded stay at 0) the
    weight decay ``weight_decay``."""
    for group in optimizer.param_groups:
        if group.setdefault("decays", group.get("weight_decay", 0.0) != 0.0):
            group["weight_decay"] = weight_decay
