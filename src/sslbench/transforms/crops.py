"""Cropping from cached squashed squares, and the map of where each view pixel comes from.

Images are cached as S x S squares (the original picture squashed) plus their original aspect
ratio, and crop boxes are sampled in normalised *original* coordinates so that scale and ratio
mean what they mean in torchvision, then resampled with ``roi_align``. The pipeline calls these
directly (a crop needs the aspect and the output size, so it is not one of ``registry.OPS``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import roi_align

from .params import ResizedCropParams


def sample_crop_boxes(
    aspect: Tensor, gen: torch.Generator, params: ResizedCropParams, attempts: int = 10
) -> Tensor:
    """Sample random-resized-crop boxes; returns (N, 4) float32 ``(x0, y0, x1, y1)`` in [0, 1].

    Coordinates are normalised coordinates of the ORIGINAL picture, whose width / height is
    aspect[N]. Area fraction s ~ U(scale) and log ratio ~ U(log ratio) are measured in original
    pixels, hence w = sqrt(s r / a), h = sqrt(s a / r). Like torchvision, up to ``attempts``
    tries (all drawn at once) for a box that fits, else the whole image cropped to the nearest
    allowed ratio, centred. The position is uniform over the places the box fits.
    """
    n, dev = aspect.shape[0], aspect.device
    a = aspect.to(torch.float32).view(-1, 1)
    (s_lo, s_hi), (r_lo, r_hi) = params.scale, params.ratio
    u = torch.rand(n, attempts, 2, generator=gen, device=dev)
    area = s_lo + (s_hi - s_lo) * u[..., 0]
    ratio = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[..., 1])
    w, h = torch.sqrt(area * ratio / a), torch.sqrt(area * a / ratio)
    fits = (w <= 1.0) & (h <= 1.0)
    # Weights attempts, attempts-1, ..., 1 on the fitting tries: the argmax is the first fitting
    # one, with no reliance on how argmax breaks ties.
    rank = torch.arange(attempts, 0, -1, device=dev, dtype=torch.float32)
    first = (fits.to(torch.float32) * rank).argmax(dim=1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)
    a = a[:, 0]
    fallback_ratio = a.clamp(r_lo, r_hi)
    w = torch.where(found, w, (fallback_ratio / a).clamp(max=1.0))
    h = torch.where(found, h, (a / fallback_ratio).clamp(max=1.0))
    pos = torch.where(found[:, None], torch.rand(n, 2, generator=gen, device=dev), 0.5)
    x0, y0 = pos[:, 0] * (1.0 - w), pos[:, 1] * (1.0 - h)
    return torch.stack((x0, y0, x0 + w, y0 + h), dim=1).clamp(0.0, 1.0)


def center_boxes(aspect: Tensor) -> Tensor:
    """(N, 4) boxes of the largest centred square of each original picture, normalised coords.

    E.g. for aspect 4/3 the box spans the middle 3/4 of the width and the full height.
    """
    a = aspect.to(torch.float32)
    w, h = (1.0 / a).clamp(max=1.0), a.clamp(max=1.0)
    x0, y0 = (1.0 - w) / 2, (1.0 - h) / 2
    return torch.stack((x0, y0, x0 + w, y0 + h), dim=1)


def crop_to_boxes(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Resample normalised boxes[N, 4] of images[N, 3, H, W] to float32 (N, 3, size, size).

    ``roi_align`` with ``aligned=True`` treats pixel i as covering [i, i + 1), so a normalised
    box maps to pixels by multiplying by the side; ``sampling_ratio=-1`` averages
    ceil(box side / size) points per output pixel along each axis, which antialiases when
    shrinking. uint8 input is scaled to [0, 1].
    """
    x = images.to(torch.float32)  # uint8 is scaled after resampling: a smaller tensor
    n, _, height, width = x.shape
    b = boxes.to(x.device, torch.float32)
    index = torch.arange(n, device=x.device, dtype=torch.float32)
    rois = torch.stack(
        (index, b[:, 0] * width, b[:, 1] * height, b[:, 2] * width, b[:, 3] * height), 1
    )
    out = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if images.dtype == torch.uint8:
        out.mul_(1.0 / 255.0)
    return out.clamp_(0.0, 1.0)


def resized_crop(
    images: Tensor, gen: torch.Generator, params: ResizedCropParams, *, aspect: Tensor, size: int
) -> Tensor:
    """Random resized crop of cached squares images[N, 3, S, S] (uint8 or float) with original
    aspect[N] (width / height) -> float32 (N, 3, size, size) in [0, 1]."""
    boxes = sample_crop_boxes(aspect.to(images.device), gen, params)
    return crop_to_boxes(images, boxes, size)


def center_view(images: Tensor, aspect: Tensor, size: int) -> Tensor:
    """Largest centred square of each original picture, resized to float32 (N, 3, size, size)."""
    return crop_to_boxes(images, center_boxes(aspect.to(images.device)), size)


def box_coordinates(boxes: Tensor, aspect: Tensor, size: int) -> Tensor:
    """(N, 2, size, size) map of where each output pixel's centre lies in the original picture.

    Channel 0 is x, channel 1 is y, both in units of the original height (x in [0, aspect],
    y in [0, 1]) so that distances are isotropic. Geometric ops move this map exactly as they
    move the pixels, which is how VICRegL matches locations between views.
    """
    steps = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size  # (S,)
    x0, y0, x1, y1 = boxes.to(torch.float32).unbind(1)
    a = aspect.to(boxes.device, torch.float32)
    xs = ((x0[:, None] + (x1 - x0)[:, None] * steps) * a[:, None])[:, None, :].expand(-1, size, -1)
    ys = (y0[:, None] + (y1 - y0)[:, None] * steps)[:, :, None].expand(-1, -1, size)
    return torch.stack((xs, ys), dim=1)
