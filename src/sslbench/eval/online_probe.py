"""An online linear probe: how linearly separable the features are, while pretraining runs.

A linear layer on the detached pooled features of each step's first global view, trained
on the batch's labels (from the cache) with its own SGD optimiser, as solo-learn and
lightly's benchmarks follow their runs. It never touches the run: the features are
detached, the layer and its optimiser live in this callback (not in the LightningModule,
so neither the method's optimiser nor DDP sees them), it starts at zero (no random draw),
and the test pass runs the backbone in eval mode. Logged to metrics.csv:

- ``online_probe_train_acc``: the epoch's mean training accuracy on the augmented views;
- ``online_probe_top1``: top-1 on the centre view of the test images, every
  ``eval.online_every_n_epochs`` epochs (and at the last), when that is set.

Its state goes into last.ckpt (Lightning saves callback states), so a resumed run carries
on with the probe it had.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

#: The probe's optimiser: SGD with momentum at a constant learning rate (solo-learn's
#: online classifier uses 0.1, momentum 0.9, no weight decay).
PROBE_LR = 0.1


class OnlineProbe(pl.Callback):
    """Trains a linear probe on the features the method's step leaves in
    ``pl_module.online_features`` (set when ``pl_module.keep_online_features`` is true).

    ``test`` is ``(images, aspect, labels, indices)`` of the test split (cached uint8), or
    None for no test accuracy; ``evaluate_every`` in epochs (None: never).
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        test: tuple[Any, Any, Any, Any] | None,
        evaluate_every: int | None,
        eval_batch_size: int = 512,
    ) -> None:
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=PROBE_LR, momentum=0.9)
        self.test = test
        self.evaluate_every = evaluate_every
        self.eval_batch_size = eval_batch_size

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.keep_online_features = True
        # before a resumed run's state is loaded (Lightning restores callbacks after setup):
        # Optimizer.load_state_dict then puts the momentum buffers on the parameters' device
        self.head.to(pl_module.device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        features = getattr(pl_module, "online_features", None)
        pl_module.online_features = None
        if features is None or not isinstance(batch, (tuple, list)) or len(batch) != 3:
            return  # views made in DataLoader workers carry no labels
        labels = batch[2].to(features.device).long()
        known = labels >= 0
        with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
            logits = self.head(features.float())
            loss = F.cross_entropy(logits[known], labels[known]) if known.any() else None
            if loss is not None:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        if known.any():  # no host sync: Lightning averages the epoch's values at its end
            correct = (logits.detach()[known].argmax(1) == labels[known]).float().mean()
            pl_module.log(
                "online_probe_train_acc", correct, on_step=False, on_epoch=True,
                batch_size=int(known.shape[0]),
            )  # fmt: skip

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.test is None or self.evaluate_every is None:
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.evaluate_every and epoch != trainer.max_epochs:
            return
        top1 = self.test_top1(pl_module)
        pl_module.log("online_probe_top1", top1, on_step=False, on_epoch=True)

    @torch.no_grad()
    def test_top1(self, pl_module: pl.LightningModule) -> float:
        """Top-1 of the probe on the test images' centre view (the backbone in eval mode for
        the pass, then back as it was)."""
        from sslbench.eval.probes import extract_features

        images, aspect, labels, indices = self.test
        features = extract_features(
            pl_module.backbone, images, aspect, indices, pl_module.pipeline,
            batch_size=self.eval_batch_size, device=pl_module.device,
        )  # fmt: skip
        predicted = self.head(features.to(pl_module.device)).argmax(1).cpu()
        truth = torch.from_numpy(labels[indices]).long()
        return float((predicted == truth).float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.head.load_state_dict(state_dict["head"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
