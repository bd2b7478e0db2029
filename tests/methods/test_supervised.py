"""``method=supervised``, the upper-bound row: cross-entropy on the labels through a linear
classifier, the class count read from the data, and pretraining images without labels refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, small_method

from sslbench.config import compose
from sslbench.errors import ConfigError
from sslbench.methods.base import Views
from sslbench.run.build import labelled_class_count


def _stl10_folder(root: Path) -> Path:
    """A miniature STL-10 (binary layout): 2 labelled training images, 1 test image and 3
    unlabelled images, which STL-10's usual protocol pretrains on."""
    folder = root / "stl10_binary"
    folder.mkdir()
    image = np.zeros((3, 96, 96), dtype=np.uint8).ravel()
    for split, n in (("train", 2), ("test", 1), ("unlabeled", 3)):
        (folder / f"{split}_X.bin").write_bytes(np.concatenate([image] * n).tobytes())
    (folder / "train_y.bin").write_bytes(bytes([1, 10]))
    (folder / "test_y.bin").write_bytes(bytes([3]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    return folder


def test_unlabelled_pretraining_images_are_refused(tmp_path) -> None:
    folder = _stl10_folder(tmp_path)
    cfg = compose(["method=supervised", "dataset=stl10", f"dataset.path={folder}",
                   "image_size=32", "progress_bar=false", f"runs_root={tmp_path}"])  # fmt: skip
    with pytest.raises(ConfigError, match="3 of the 5 pretraining images of dataset stl10"):
        labelled_class_count(cfg)


def test_class_count_comes_from_the_data() -> None:
    cfg = compose(["method=supervised", *TINY_RUN])
    assert cfg.method.num_classes is None  # filled in when the run is built
    assert labelled_class_count(cfg) == 10  # Fashion-MNIST's classes


def test_loss_is_cross_entropy_of_the_classifier_on_the_labels(fmnist_batch) -> None:
    images, aspect, labels = fmnist_batch
    model = small_method("supervised", "method.num_classes=10", "method.label_smoothing=0.0")[0]
    model.train()
    view = torch.rand(8, 3, 32, 32)
    target = labels[:8]
    loss = model.training_loss(Views(global_views=[view], local_views=[], class_labels=target))
    logits = model.classifier(model.features(view))
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, target), atol=1e-5)
    with pytest.raises(ValueError, match="needs the batch's class labels"):
        model.training_loss(Views(global_views=[view], local_views=[]))
