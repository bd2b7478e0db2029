"""The shared parts of pretext tasks: what a head sees of a training step, and the tap
that collects the backbone's feature maps of the views while the method runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class PretextInputs:
    """What a pretext head sees of one training step.

    ``views``: the views that carry the task's labels, global views first, each
    (N, 3, s, s); ``feature_maps``: the backbone's feature map of each, taken from the
    method's own forward pass ((N, C, h, w) for CNNs, tokens for ViTs); ``labels``: the
    op's labels of each view (LoRot: (N,) rotation class; region confusion: (N, grid²)
    permutation);
    ``pool``: the backbone's pooling, feature map → (N, C); ``encode``: the backbone on
    further views → their feature map (DCL's unshuffled view); ``spatial``: a feature map as
    (N, C, h, w) (a CNN's as it is, a ViT's patch tokens on their grid).
    """

    views: list[Tensor]
    feature_maps: list[Tensor]
    labels: list[Tensor]
    pool: Callable[[Tensor], Tensor]
    encode: Callable[[Tensor], Tensor]
    spatial: Callable[[Tensor], Tensor] = lambda fmap: fmap


class PretextTask(nn.Module):
    """A head (or heads) that predicts what an op did to each view.

    Args:
        cfg: the run's ``pretext`` section (name, weight, the task's own keys).
        op_params: the op's parameters in each global-view variant of the transform.
        feature_dim: size of the pooled backbone features.
        backbone: the backbone, to probe its feature map at construction (not kept).
        view_size: side of the global views.
    """

    #: What ``accuracy`` (results.json: pretext_accuracy) measures, and its chance level.
    accuracy_means = ""
    #: ``accuracy`` of a head that guesses (results.json: pretext_chance)
    chance: float | None = None

    def __init__(
        self,
        cfg: Mapping[str, Any],
        *,
        op_params: Sequence[Any],
        feature_dim: int,
        backbone: nn.Module,
        view_size: int,
    ) -> None:
        super().__init__()
        self.name = str(cfg["name"])
        self.weight = float(cfg.get("weight", 1.0))

    def forward(self, inputs: PretextInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """(the task's loss before ``weight``, detached metrics by name: ``accuracy``
        first, then the task's own)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for results.json: the task, its weight and what its accuracy means."""
        return f"{self.name}, weight {self.weight:g}; accuracy: {self.accuracy_means}"


def single_value(op: str, key: str, op_params: Sequence[Any]) -> Any:
    """The value of an op parameter that a head depends on, the same in every view variant."""
    values = {getattr(p, key) for p in op_params}
    if len(values) != 1:
        raise ValueError(
            f"the transform's view variants give {op}.{key} the values "
            f"{', '.join(map(str, sorted(values)))}; its pretext head needs one"
        )
    return values.pop()


def class_balanced_mean(values: Tensor, classes: Tensor, num_classes: int) -> Tensor:
    """The mean of ``values`` (M,) in each class of ``classes`` (M,), averaged over the
    classes present: each class weighs the same however many samples it has. No host sync."""
    sums = torch.zeros(num_classes, device=values.device).index_add(0, classes, values.float())
    counts = torch.bincount(classes, minlength=num_classes).float()
    present = (counts > 0).float()
    return (sums / counts.clamp_min(1.0) * present).sum() / present.sum()


class FeatureTap:
    """The backbone's feature maps of one training step, found again by view.

    The method's backbone calls record (input, feature map); a joint forward of several
    views concatenated is registered with :meth:`joined`, so :meth:`feature_map` can hand
    out each view's part of it.
    """

    def __init__(self) -> None:
        self.records: list[tuple[Tensor, Tensor]] = []
        # id of a joint input -> (the input, kept alive so its id stays its own; its views)
        self.parts: dict[int, tuple[Tensor, list[Tensor]]] = {}

    def record(self, inputs: Tensor, feature_map: Tensor) -> None:
        self.records.append((inputs, feature_map))

    def joined(self, inputs: Tensor, views: Sequence[Tensor]) -> None:
        """``inputs`` is ``torch.cat(views)``."""
        self.parts[id(inputs)] = (inputs, list(views))

    def feature_map(self, view: Tensor) -> Tensor | None:
        """The recorded feature map of ``view`` (the first, if it went through twice)."""
        for inputs, fmap in self.records:
            if inputs is view:
                return fmap
            start = 0
            for part in self.parts.get(id(inputs), (inputs, []))[1]:
                if part is view:
                    return fmap[start : start + part.shape[0]]
                start += part.shape[0]
        return None
