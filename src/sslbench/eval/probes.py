"""Evaluation of a frozen backbone: features computed once, then a linear probe and kNN.

The study scored each run with a linear classifier on the frozen backbone. Here the
features of the train and test images are computed once (deterministic centre view, no
augmentation), so the probe costs seconds instead of epochs of forward passes:

- linear probe: multinomial logistic regression on standardised features, fitted by
  L-BFGS; its L2 strength is chosen by k-fold cross-validation on the train features, then
  the probe is refitted on all of them (top-1, top-5);
- weighted kNN (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
  Instance Discrimination"): cosine similarity, k neighbours, votes exp(sim / T).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.transforms import Pipeline

#: L2 strengths tried for the linear probe (on the mean cross-entropy).
L2_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: np.ndarray,
    aspect: np.ndarray,
    indices: np.ndarray,
    pipeline: Pipeline,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    on_batch: Callable[[], Any] | None = None,
) -> Tensor:
    """Pooled features (len(indices), D) in float32 of cached uint8 images (N, 3, S, S),
    from the pipeline's deterministic evaluation view (centre square, normalised);
    ``on_batch`` is called after each batch (a progress bar)."""
    was_training = backbone.training
    backbone.eval()
    device = torch.device(device)
    chunks = []
    for start in range(0, len(indices), batch_size):
        # Sorted reads from the memory-mapped cache; indices are sorted subsets already.
        idx = indices[start : start + batch_size]
        batch = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device)
        asp = torch.from_numpy(np.ascontiguousarray(aspect[idx])).to(device)
        view = pipeline.eval_view(batch, asp)  # centre view at the pipeline's size
        with torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
        ):
            chunks.append(backbone(view).float().cpu())
        if on_batch is not None:
            on_batch()
    backbone.train(was_training)
    return torch.cat(chunks)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.float().mean())


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int) -> nn.Linear:
    torch.manual_seed(0)  # the probe is deterministic given the features
    probe = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(
        probe.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


@dataclass
class LinearProbeResult:
    top1: float
    top5: float | None  # None with 5 classes or fewer, where every image is in its top 5
    l2: float
    description: str
    #: how the L2 strength was chosen: folds (0: one held-out split, None: too few images to
    #: choose, the grid's first value) and the mean held-out accuracy of each value tried
    folds: int | None = None
    selection_accuracy: dict[str, float] = field(default_factory=dict)


def top5_means_something(num_classes: int) -> bool:
    """Top-5 accuracy is 1 by construction with 5 classes or fewer: reported only above."""
    return num_classes > 5


def _held_out_parts(n: int, folds: int, val_fraction: float, seed: int) -> list[Tensor]:
    """The held-out parts of ``n`` train images: ``folds`` disjoint folds covering them all
    (k-fold), or with ``folds`` < 2 one part of ``val_fraction`` of them; drawn with
    ``seed``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if folds >= 2:
        return [order[i::folds] for i in range(folds)]
    return [order[: int(n * val_fraction)]]


def choose_l2(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    max_iter: int,
    folds: int = 5,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[float, int | None, dict[str, float]]:
    """The L2 strength of :data:`L2_GRID` with the best held-out accuracy: the mean over
    ``folds`` folds (each image held out once), so that features that differ a little (a
    resumed run, another seed) do not flip the choice as one 20% split of a small train set
    did; ties go to the stronger L2. With too few images for every fit part to hold
    ``num_classes`` of them, no choice is made: the grid's first value, folds None."""
    parts = _held_out_parts(len(x), folds, val_fraction, seed)
    if not parts[0].numel() or any(len(x) - len(part) < num_classes for part in parts):
        return L2_GRID[0], None, {}
    correct = dict.fromkeys(L2_GRID, 0)
    everything = torch.ones(len(x), dtype=torch.bool)
    for held in parts:
        fit = everything.clone()
        fit[held] = False
        for l2 in L2_GRID:
            probe = _fit_logistic(x[fit], y[fit], num_classes, l2, max_iter)
            with torch.no_grad():
                correct[l2] += int((probe(x[held]).argmax(1) == y[held]).sum())
    seen = sum(len(part) for part in parts)
    accuracy = {f"{l2:g}": correct[l2] / seen for l2 in L2_GRID}
    best = max(L2_GRID, key=lambda l2: (correct[l2], l2))
    return best, (folds if folds >= 2 else 0), accuracy


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    max_iter: int = 200,
    folds: int = 5,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> LinearProbeResult:
    """Logistic regression on frozen features; L2 chosen by k-fold cross-validation on the
    train features (:func:`choose_l2`), then refitted on all of them."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    best_l2, used_folds, accuracy = choose_l2(
        train_x, train_y, num_classes, max_iter=max_iter, folds=folds,
        val_fraction=val_fraction, seed=seed,
    )  # fmt: skip
    probe = _fit_logistic(train_x, train_y, num_classes, best_l2, max_iter)
    with torch.no_grad():
        logits = probe(test_x)
    if used_folds is None:
        how = "not chosen: too few images per class to hold any out"
    elif used_folds:
        how = f"chosen from {list(L2_GRID)} by {used_folds}-fold cross-validation"
    else:
        how = f"chosen from {list(L2_GRID)} on {val_fraction:.0%} of them"
    description = (
        f"linear: L-BFGS logistic regression ({max_iter} iterations) on frozen standardised "
        f"centre-view features of {len(train_x)} train images, L2 {best_l2:g} {how}; "
        f"tested on {len(test_x)} images"
    )
    top5 = topk_accuracy(logits, test_y, 5) if top5_means_something(num_classes) else None
    return LinearProbeResult(
        topk_accuracy(logits, test_y, 1), top5, best_l2, description, used_folds, accuracy
    )


def knn_k_used(k: int, train_images: int) -> int:
    """k, clamped to the train images: with k at or above their number every test image is
    voted on by the whole train set and kNN measures little (say so beside the result)."""
    return min(k, train_images)


#: The few-shot evaluations: result-key suffix -> fraction of the train labels.
FEW_SHOT_FRACTIONS: dict[str, float] = {"1pct": 0.01, "10pct": 0.1}


def few_shot_probes(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    seed: int,
    max_iter: int = 200,
    folds: int = 5,
    val_fraction: float = 0.2,
) -> dict[str, Any]:
    """The linear probe trained on 1% and 10% of the train labels (class-stratified, at
    least one image per class, drawn with ``seed``: the same images for every run scored on
    the same train set), tested on all test images: ``linear_top1_1pct``,
    ``linear_top1_10pct``, ``few_shot`` saying how many images each used, and
    ``few_shot_images`` their numbers."""
    from sslbench.data.subset import few_shot_subset

    results: dict[str, Any] = {"few_shot_images": {}}
    used = []
    for suffix, fraction in FEW_SHOT_FRACTIONS.items():
        subset = torch.from_numpy(few_shot_subset(train_y.numpy(), fraction, seed))
        probe = linear_probe(
            train_x[subset], train_y[subset], test_x, test_y, num_classes,
            max_iter=max_iter, folds=folds, val_fraction=val_fraction, seed=seed,
        )  # fmt: skip
        results[f"linear_top1_{suffix}"] = probe.top1
        results["few_shot_images"][suffix] = len(subset)
        chosen = "L2 not chosen" if probe.folds is None else f"L2 {probe.l2:g}"
        used.append(f"{fraction:.0%}: {len(subset)} images, {chosen}")
    results["few_shot"] = (
        f"linear probe (L-BFGS, as linear_top1) on class-stratified subsets of the "
        f"{len(train_x)} train images, at least one per class, seed {seed} ({'; '.join(used)})"
    )
    return results


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> float:
    """Weighted kNN top-1: each of the k nearest train features (cosine) votes for its
    class with weight exp(similarity / temperature)."""
    train_x = F.normalize(train_x, dim=1)
    test_x = F.normalize(test_x, dim=1)
    k = knn_k_used(k, len(train_x))
    correct = 0
    for start in range(0, len(test_x), chunk):
        sims = test_x[start : start + chunk] @ train_x.T
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes = torch.zeros(len(sims), num_classes).scatter_add_(1, train_y[top_idx], weights)
        correct += int((votes.argmax(1) == test_y[start : start + chunk]).sum())
    return correct / len(test_x)
