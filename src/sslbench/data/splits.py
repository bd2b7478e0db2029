"""A run's data: the cached splits of its dataset and the seeded, stratified subsets it
trains and is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from sslbench.data import CachedSplit, get_source, load_or_build, requested_side, stratified_subset


@dataclass
class RunData:
    """The cached splits of a run and the (seeded, stratified) subsets it uses."""

    train: CachedSplit
    test: CachedSplit | None
    train_indices: np.ndarray
    test_indices: np.ndarray | None
    pretrain: CachedSplit  # what the method trains on (``train``, or STL-10's unlabeled)
    pretrain_indices: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def open_data(cfg: DictConfig, progress: bool = True) -> RunData:
    """Fetch the run's dataset if needed, then build (once) or open its decode-once caches.

    ``pretrain`` is what the method trains on: the ``train`` split, or a larger split with
    unlabeled images where the dataset has one (STL-10); the probe always trains on
    ``train``. The training subsets (``dataset.max_train``) are drawn with the run's seed; the
    test subset (``dataset.max_test``) with ``eval.subset_seed``, so every run of a dataset,
    whatever its seed, is scored on the same images.
    """
    source = get_source(cfg.dataset.name, cfg.dataset.path, cfg.dataset.get("url"),
                        progress=progress)  # fmt: skip
    side = requested_side(source, cfg.dataset.cache_size, cfg.image_size)

    def cached(split: str) -> CachedSplit:
        return load_or_build(
            source,
            split,
            side,
            progress=progress,
            strict=cfg.dataset.strict,
            jpeg_draft=cfg.dataset.jpeg_draft,
        )

    train = cached("train")
    train_idx = stratified_subset(train.labels, cfg.dataset.max_train, cfg.seed)
    pretrain, pretrain_idx = train, train_idx
    if source.pretrain_split() != "train":
        pretrain = cached(source.pretrain_split())
        pretrain_idx = stratified_subset(pretrain.labels, cfg.dataset.max_train, cfg.seed)
    test = test_idx = None
    if "test" in source.splits() and source.classes:
        test = cached("test")
        test_idx = stratified_subset(test.labels, cfg.dataset.max_test, cfg.eval.subset_seed)
    return RunData(train, test, train_idx, test_idx, pretrain, pretrain_idx)
