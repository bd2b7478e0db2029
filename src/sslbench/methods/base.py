"""The shared base of every SSL method: a LightningModule trained by Lightning's Trainer.

A batch arrives as uint8 images straight from the decode-once cache. The training step
then reads top to bottom:

1. views: the pipeline augments the batch on the module's device (GPU when there is one),
   in float32 outside autocast, with a generator seeded from (seed, rank, epoch, step);
2. the subclass turns the views into a loss (backbone, heads, lightly loss in float32);
3. a non-finite loss sets a flag on the device, read every N steps, so no step waits for
   the host.

A method subclasses :class:`SSLMethod` and implements :meth:`training_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from sslbench.transforms import Pipeline, make_generator


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class SSLMethod(pl.LightningModule):
    """Backbone + method heads, trained on views of uint8 batches.

    Args:
        method: the ``method`` section of the run config (name, optimizer, own keys).
        backbone: a feature extractor (N, 3, H, W) -> (N, D), e.g. from create_backbone.
        pipeline: the augmentation pipeline applied to the global views.
        batch_size: the global batch size (over all devices), for the lr scaling.
        seed: root of the augmentation random streams.
        check_finite_every_n_steps: how often the non-finite flag is read on the host.
    """

    #: Views per image that the method needs (two global views for all the study's methods).
    num_global_views = 2

    def __init__(
        self,
        method: Mapping[str, Any],
        backbone: nn.Module,
        pipeline: Pipeline,
        *,
        batch_size: int,
        seed: int = 0,
        check_finite_every_n_steps: int = 10,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.method_cfg = dict(method)
        self.backbone = backbone
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.seed = seed
        self.check_every = max(1, check_finite_every_n_steps)
        self.channels_last = channels_last
        self.feature_dim = int(backbone.num_features)
        # First step whose loss was not finite; -1 while all are. Lives on the device.
        self.register_buffer("first_bad_step", torch.tensor(-1), persistent=False)

    # -- what a method implements -------------------------------------------------------
    def training_loss(self, views: list[Tensor]) -> Tensor:
        """The method's loss for one batch of views, each (N, 3, H, W)."""
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------
    def float32_loss(self, loss_fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
        """Call ``loss_fn`` in float32 outside autocast (bf16 overflows, e.g. in Sinkhorn)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return loss_fn(*(t.float() for t in tensors))

    def make_views(self, images: Tensor, aspect: Tensor) -> list[Tensor]:
        """The global views of a uint8 batch, augmented on the module's device."""
        generator = make_generator(
            self.seed, self.device, self.global_rank, self.current_epoch, self.global_step
        )
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            views = [self.pipeline(images, aspect, generator) for _ in range(self.num_global_views)]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, aspect, _labels = batch
        loss = self.training_loss(self.make_views(images, aspect))
        self._flag_nonfinite(loss)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    def _flag_nonfinite(self, loss: Tensor) -> None:
        bad_now = ~torch.isfinite(loss.detach())
        first_time = bad_now & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(
            first_time, torch.full_like(self.first_bad_step, self.global_step), self.first_bad_step
        )
        if (self.global_step + 1) % self.check_every == 0:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        step = int(self.first_bad_step)  # the one host sync, every check_every steps
        if step >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss at step {step} (epoch {self.current_epoch}); "
                f"try a lower method.optimizer.lr (now {self.method_cfg['optimizer']['lr']})"
            )

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()

    def configure_optimizers(self) -> Any:
        opt_cfg = self.method_cfg["optimizer"]
        reference = opt_cfg.get("reference_batch_size")
        lr = opt_cfg["lr"] * (self.batch_size / reference if reference else 1.0)
        optimizer = build_optimizer(
            opt_cfg["name"],
            self.parameters(),
            lr=lr,
            momentum=opt_cfg.get("momentum", 0.0),
            weight_decay=opt_cfg.get("weight_decay", 0.0),
        )
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs or 1)
        warmup_steps = int(opt_cfg.get("warmup_epochs", 0.0) * steps_per_epoch)
        schedule = lr_schedule(opt_cfg.get("schedule", "cosine"), total_steps, warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
SCHEDULES = ("cosine", "constant")


def build_optimizer(
    name: str, params: Any, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD, Adam, AdamW or LARS (lightly's) by name."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        from lightly.utils.lars import LARS

        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")


def lr_schedule(name: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at each optimiser step: linear warm-up, then cosine to 0
    (or constant)."""
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
