"""The evaluations that train on labels: lightly's SGD linear evaluation and fine-tuning.

Both train a linear head on views of the labelled train images made by the run's own
``resized_crop`` and ``hflip`` ops (and its normalisation), with SGD (momentum 0.9, no
weight decay, lr x batch / 256) under a cosine schedule stepped every step without
warm-up, as lightly's benchmarks train them (``linear_eval.py``, ``finetune_eval.py``);
then they score top-1 (and top-5 above 5 classes) on the centre view of the test images.

- ``eval.probe=sgd``: the backbone frozen in eval mode (batch norm keeps its running
  statistics), the head alone trained, ``eval.sgd_epochs`` (90) at ``eval.sgd_lr`` (0.1);
  how the study scored its runs. The default L-BFGS probe on precomputed features gives
  its number in seconds instead of a forward pass per image per epoch.
- ``eval.finetune=true``: a copy of the backbone trained with the head (batch norm in
  training mode), ``eval.finetune_epochs`` (30) at ``eval.finetune_lr`` (0.05): the run's
  own backbone is left as it was for the other evaluations.

The loop below is the whole training: one epoch is a shuffled pass in batches, each batch
viewed, forwarded, and stepped.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.eval.probes import top5_means_something, topk_accuracy
from sslbench.transforms import Pipeline

#: The ops of a run's transform that the supervised evaluations keep: crop, flip, normalise.
LIGHT_OPS = ("resized_crop", "hflip", "normalize")


@dataclass
class LabelledImages:
    """Cached uint8 images (N, 3, S, S), their aspect ratios and labels, and the positions
    of the ones an evaluation uses."""

    images: np.ndarray
    aspect: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def labelled(self) -> LabelledImages:
        keep = self.indices[self.labels[self.indices] >= 0]
        return LabelledImages(self.images, self.aspect, self.labels, keep)

    def batch(self, positions: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        positions = np.sort(positions)  # sorted reads from the memory-mapped cache
        return (
            torch.from_numpy(np.ascontiguousarray(self.images[positions])).to(device),
            torch.from_numpy(np.ascontiguousarray(self.aspect[positions])).to(device),
            torch.from_numpy(self.labels[positions].astype(np.int64)).to(device),
        )


def light_augmentation(transform: Mapping[str, Any], size: int) -> Pipeline:
    """The run's crop, flip and normalisation ops (with their parameters), nothing else."""
    ops = {
        entry: params
        for entry, params in transform["ops"].items()
        if (params or {}).get("op", entry) in LIGHT_OPS
    }
    return Pipeline(ops, size)


@dataclass
class SupervisedSettings:
    finetune: bool  # train the backbone too (a copy of it)
    epochs: int
    lr: float  # at batch 256; scaled by batch_size / 256
    batch_size: int
    seed: int


def train_and_score(
    backbone: nn.Module,
    num_classes: int,
    train: LabelledImages,
    test: LabelledImages,
    train_views: Pipeline,
    test_views: Pipeline,
    settings: SupervisedSettings,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train a linear head (and with ``settings.finetune`` the backbone) on views of
    ``train``; return ``top1``, ``top5`` (None at 5 classes or fewer) on ``test`` and a
    ``description`` of what was done."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    train, test = train.labelled(), test.labelled()
    if settings.finetune:
        backbone = copy.deepcopy(backbone)
    backbone = backbone.to(device)
    with torch.random.fork_rng(devices=[]):  # the head's init: its own seed
        torch.manual_seed(settings.seed)
        head = nn.Linear(int(backbone.num_features), num_classes).to(device)
    params = list(head.parameters())
    if settings.finetune:
        params += [p for p in backbone.parameters() if p.requires_grad]
    batch_size = min(settings.batch_size, len(train.indices))
    optimizer = torch.optim.SGD(
        params, lr=settings.lr * batch_size / 256, momentum=0.9, weight_decay=0.0
    )
    steps_per_epoch = len(train.indices) // batch_size  # drop_last, as lightly's loaders
    total = settings.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    order_rng = np.random.default_rng(settings.seed)
    views_gen = torch.Generator(device).manual_seed(settings.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    what = "fine-tune" if settings.finetune else "linear (SGD)"
    bar = tqdm(range(settings.epochs), desc=what, unit="epoch", disable=not progress)
    for _ in bar:
        backbone.train(settings.finetune)
        order = order_rng.permutation(train.indices)
        for step in range(steps_per_epoch):
            images, aspect, labels = train.batch(
                order[step * batch_size : (step + 1) * batch_size], device
            )
            views = train_views(images, aspect, views_gen)
            with autocast, torch.set_grad_enabled(settings.finetune):
                features = backbone(views)
            with autocast:
                loss = F.cross_entropy(head(features.float()).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")  # once an epoch: one host sync
    top1, top5 = _score(backbone, head, test, test_views, device, batch_size)
    description = (
        f"{what}: {'backbone and ' if settings.finetune else 'frozen backbone, '}linear head "
        f"trained {settings.epochs} epochs on crop+flip views of {len(train.indices)} train "
        f"images, SGD lr {settings.lr:g} x {batch_size}/256, momentum 0.9, no weight decay, "
        f"cosine per step (lightly's benchmark); tested on {len(test.indices)} images"
    )
    return {"top1": top1, "top5": top5, "description": description}


@torch.no_grad()
def _score(
    backbone: nn.Module,
    head: nn.Module,
    test: LabelledImages,
    views: Pipeline,
    device: torch.device,
    batch_size: int,
) -> tuple[float, float | None]:
    backbone.eval()
    logits, labels = [], []
    for start in range(0, len(test.indices), batch_size):
        images, aspect, batch_labels = test.batch(test.indices[start : start + batch_size], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits.append(head(backbone(views.eval_view(images, aspect)).float()).float().cpu())
        labels.append(batch_labels.cpu())
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    num_classes = all_logits.shape[1]
    top5 = topk_accuracy(all_logits, all_labels, 5) if top5_means_something(num_classes) else None
    return topk_accuracy(all_logits, all_labels, 1), top5
