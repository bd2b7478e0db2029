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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn

from sslbench.eval.probes import top5_means_something, topk_accuracy
from sslbench.nn.backbones import TokenPooled
from sslbench.nn.optim import lr_schedule
from sslbench.transforms import Pipeline

#: What the description adds where the recipe is lightly's benchmark's.
LIGHTLY_RECIPE = " (lightly's benchmark)"

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
    optimizer: str = "sgd"  # sgd (momentum 0.9) | adamw
    weight_decay: float = 0.0
    layer_decay: float | None = None  # fine-tuning: lr x decay^(layers above), timm's groups
    warmup_epochs: float = 0.0

    def recipe(self, batch_size: int) -> str:
        """The optimiser part of the description in results.json."""
        name = "SGD" if self.optimizer == "sgd" else "AdamW"
        text = f"{name} lr {self.lr:g} x {batch_size}/256"
        text += ", momentum 0.9" if self.optimizer == "sgd" else ""
        decay = self.weight_decay
        text += f", weight decay {decay:g}" if decay else ", no weight decay"
        if self.layer_decay is not None:
            text += f", layer-wise lr decay {self.layer_decay:g}"
        if self.warmup_epochs:
            text += f", {self.warmup_epochs:g} warm-up epochs"
        return text


def parameter_groups(
    backbone: nn.Module, head: nn.Module, settings: SupervisedSettings
) -> list[dict[str, Any]]:
    """The optimiser's groups: the head's (full lr), and with fine-tuning the backbone's,
    each with its ``lr_scale``: 1, or with ``layer_decay`` d the layer-wise scales of BEiT
    and MAE (biases, norms and timm's ``no_weight_decay()`` tokens then undecayed)."""
    groups: list[dict[str, Any]] = [{"params": list(head.parameters()), "lr_scale": 1.0}]
    if not settings.finetune:
        return groups
    decay = settings.layer_decay
    if decay is None:
        trainable = [p for p in backbone.parameters() if p.requires_grad]
        return groups + [{"params": trainable, "lr_scale": 1.0}]
    # a ViT evaluated on one pooling (eval.pool) is a TokenPooled around it: the same parameters
    inner = backbone.vit if isinstance(backbone, TokenPooled) else backbone
    if isinstance(inner, VisionTransformer):
        return groups + _vit_layer_groups(inner, decay, settings.weight_decay)
    if not hasattr(backbone, "group_matcher"):
        raise ValueError(
            f"eval.finetune_layer_decay={decay}: {type(backbone).__name__} does not say its "
            "layers (timm's group_matcher); use eval.finetune_layer_decay=null"
        )
    # Other timm models: timm's layer groups (its top group at scale 1).
    no_decay = getattr(backbone, "no_weight_decay", lambda: set())()
    return groups + param_groups_layer_decay(
        backbone, weight_decay=settings.weight_decay, no_weight_decay_list=no_decay,
        layer_decay=decay,
    )  # fmt: skip


def _vit_layer_groups(vit: VisionTransformer, decay: float, weight_decay: float) -> list[dict]:
    """MAE's layer ids (its util/lr_decay.py, after BEiT): the embeddings 0, block i i + 1,
    the final norm (the head's layer) depth + 1; a layer's lr scale is
    decay^(depth + 1 − id), so the last block learns at ``decay`` times the head's lr."""
    depth = len(vit.blocks)
    no_decay = set(vit.no_weight_decay())
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in vit.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        elif name in no_decay or name.startswith(("patch_embed", "reg_token")):
            layer = 0
        else:
            layer = depth + 1
        decays = param.ndim > 1 and name not in no_decay
        group = groups.setdefault((layer, decays), {
            "params": [], "lr_scale": decay ** (depth + 1 - layer),
            "weight_decay": weight_decay if decays else 0.0,
        })  # fmt: skip
        group["params"].append(param)
    return list(groups.values())


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
        # all of it learns: a method may have fixed some parameters in pretraining (MAE's
        # sin-cos position embedding), which fine-tuning trains (MAE's main_finetune.py)
        backbone.requires_grad_(True)
    backbone = backbone.to(device)
    with torch.random.fork_rng(devices=[]):  # the head's init: its own seed
        torch.manual_seed(settings.seed)
        head = nn.Linear(int(backbone.num_features), num_classes).to(device)
    groups = parameter_groups(backbone, head, settings)
    batch_size = min(settings.batch_size, len(train.indices))
    lr = settings.lr * batch_size / 256
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale")
    if settings.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=lr, weight_decay=settings.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=settings.weight_decay)
    steps_per_epoch = len(train.indices) // batch_size  # drop_last, as lightly's loaders
    total = settings.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule("cosine", total, int(settings.warmup_epochs * steps_per_epoch))
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
        f"images, {settings.recipe(batch_size)}, cosine per step"
        f"{LIGHTLY_RECIPE if settings.optimizer == 'sgd' else ''}; "
        f"tested on {len(test.indices)} images"
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
