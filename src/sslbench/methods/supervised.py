"""Supervised reference: the same backbone and pipeline, trained with the labels.

Not a self-supervised method: the upper bound of a comparison table, beside random
initialisation (the lower). The backbone and a linear classifier are trained with
cross-entropy on the class labels of one augmented view per image (the run's pipeline,
so the reference sees the augmentations the SSL rows see); then the backbone is scored as
every run is, by the linear probe and kNN on its frozen features, so the row says what
labels buy with this backbone, pipeline and budget. Unlabelled images (STL-10's 100k) have
no place in it: such a pretraining split is refused.

Shapes: one view (N, 3, H, W) → features (N, D) → logits (N, num_classes) → cross-entropy
with the labels (N,).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sslbench.methods.base import SSLMethod, Views


class Supervised(SSLMethod):
    """Cross-entropy on the labels, through a linear classifier on the pooled features.

    Method keys (method/supervised.yaml): num_classes (null: the dataset's, filled in when
    the run is built), label_smoothing.
    """

    #: lightly's benchmarks have no supervised row to compare the data path with.
    lightly_transform = None
    #: one augmented view per image, as a supervised recipe trains
    num_global_views = 1
    learning_run_overrides = ("epochs=2",)

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        num_classes = method.get("num_classes")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"method.num_classes must be the dataset's class count (2 or more), got "
                f"{num_classes!r}"
            )
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(method["label_smoothing"]))

    def training_loss(self, views: Views) -> Tensor:
        labels = views.class_labels
        if labels is None:
            raise ValueError("method=supervised needs the batch's class labels; none came")
        features = self.features(views.global_views[0])
        self.monitor_embeddings(features)
        logits = self.classifier(features)
        if self._trainer is not None:
            accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
            self.log("train_accuracy", accuracy, on_step=False, on_epoch=True,
                     batch_size=labels.shape[0])  # fmt: skip
        return self.float32_loss(self.criterion, logits, labels)
