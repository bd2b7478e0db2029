"""Seeded, class-stratified subsets (e.g. "train on 10% of the labels").

Taking the first n items of a class-ordered dataset would give one or two classes; a
stratified subset keeps the class proportions of the full split.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["few_shot_subset", "stratified_subset", "subset_fingerprint"]


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted int64 indices of a seeded subset of exactly ``n`` items, stratified by label.

    Each class gets ``n * count / len(labels)`` items rounded by largest remainder (so every
    class is within one of its proportional share and the total is exactly ``n``); ties in the
    remainder are broken at random by the seed. Unlabeled data (label -1) is just one more group,
    so an all-unlabeled split gets a uniform random subset. The result depends only on
    ``(labels, n, seed)``. ``n`` None or >= len(labels) returns all indices.
    """
    labels = np.asarray(labels).reshape(-1)
    total = len(labels)
    if n is None or n >= total:
        return np.arange(total, dtype=np.int64)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Integer arithmetic keeps the remainders exact (no float ties from rounding).
    share, remainder = np.divmod(counts * n, total)
    extra = n - int(share.sum())
    by_remainder = np.lexsort((rng.permutation(len(classes)), -remainder))
    share[by_remainder[:extra]] += 1

    # Group indices by class with one stable sort (faster than a mask per class).
    grouped = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
    picked = [rng.choice(g, size=k, replace=False) for g, k in zip(grouped, share, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def few_shot_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of ``fraction`` of each class of ``labels`` (rounded, at least one
    image per class), drawn with ``seed``: the labelled part of a "1% of the labels"
    evaluation. Unlabelled items (label < 0) are never picked. Depends only on
    ``(labels, fraction, seed)``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        take = max(1, round(fraction * len(members)))
        picked.append(rng.choice(members, size=take, replace=False))
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)


def subset_fingerprint(indices: np.ndarray, split_size: int) -> dict[str, int | str]:
    """What identifies a subset of a split: ``count``, the SHA-256 of its sorted indices (as
    little-endian int64) and the size of the split it was drawn from. Two runs scored on the
    same images of a dataset show the same fingerprint, whatever their seeds."""
    ordered = np.sort(np.asarray(indices, dtype="<i8").reshape(-1))
    return {
        "count": int(len(ordered)),
        "sha256": hashlib.sha256(ordered.tobytes()).hexdigest(),
        "split_size": int(split_size),
    }
