"""A method's views of one batch: what the training step hands to the method's loss, and
what makes them from a uint8 batch (in the training step, or in DataLoader workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sslbench.transforms import Pipeline, make_generator


@dataclass
class Views:
    """The views of one batch, as the method's layout asks for them.

    ``global_views``: float32 (N, 3, size, size) each, from the run's pipeline;
    ``local_views``: smaller crops (N, 3, local_size, local_size), the same ops otherwise;
    ``*_coords``: with ``needs_coordinates``, (N, 2, h, w) maps of original-image positions
    (x, y in units of the original height), moved by every geometric op like the pixels;
    ``*_labels``: per view, the pretext-task labels of the pipeline's ops (LoRot's rotation
    class, DCL's permutation) by op entry; empty dicts for most pipelines;
    ``class_labels``: the images' dataset labels (N,), read only by ``method=supervised``
    (the reference row): the SSL methods never see them.
    """

    global_views: list[Tensor]
    local_views: list[Tensor]
    global_coords: list[Tensor] | None = None
    local_coords: list[Tensor] | None = None
    global_labels: list[dict[str, Tensor]] = field(default_factory=list)
    local_labels: list[dict[str, Tensor]] = field(default_factory=list)
    class_labels: Tensor | None = None


@dataclass
class ViewMaker:
    """Makes a method's views of a uint8 batch: ``num_global`` global views (view i from
    ``pipelines[i % len]``), ``num_local`` local views, coordinate maps if asked, from a
    generator seeded with (seed, rank, epoch, step), so the same step gets the same views
    wherever they are made (the training step, or a DataLoader worker on the same device)."""

    pipelines: list[Pipeline]
    local_pipeline: Pipeline | None
    num_global: int
    num_local: int
    coordinates: bool
    seed: int

    def __call__(
        self,
        images: Tensor,
        aspect: Tensor,
        rank: int,
        epoch: int,
        step: int,
        class_labels: Tensor | None = None,
    ) -> Views:
        generator = make_generator(self.seed, images.device, rank, epoch, step)
        coords, pipelines = self.coordinates, self.pipelines
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            made = [
                pipelines[i % len(pipelines)].views(images, aspect, generator, coordinates=coords)
                for i in range(self.num_global)
            ]
            local = [
                self.local_pipeline.views(images, aspect, generator, coordinates=coords)
                for _ in range(self.num_local)
                if self.local_pipeline is not None
            ]
        views = Views(
            global_views=[v.images for v in made],
            local_views=[v.images for v in local],
            global_labels=[v.labels for v in made],
            local_labels=[v.labels for v in local],
            class_labels=class_labels,
        )
        if coords:
            views.global_coords = [v.coords for v in made]
            views.local_coords = [v.coords for v in local]
        return views
