"""Token masks for the masked-image and joint-embedding-predictive methods (MAE, SimMIM,
iBOT, I-JEPA, MSN), drawn per sample on the training device from a seeded generator.

lightly's mask helpers (``lightly.models.utils.random_token_mask``, ``random_block_mask``)
draw from torch's global random state, and its block masks loop over the images in Python,
reading sizes back to the host. These take a :class:`torch.Generator` (a method's
:meth:`~sslbench.methods.base.SSLMethod.mask_generator`, seeded from (seed, rank, epoch,
step) like the views), so a run's masks are reproducible and resumable, and are made
with a handful of tensor ops whatever the batch size: no host sync.

Shapes: a batch of N images of h × w patches (T = h·w tokens, without the class token).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> keep, masked = random_token_mask(4, 64, 0.75, g)
    >>> keep.shape, masked.shape
    (torch.Size([4, 16]), torch.Size([4, 48]))
    >>> random_block_mask(4, (8, 8), (0.15, 0.2), (0.75, 1.5), g).shape
    torch.Size([4, 8, 8])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def random_token_mask(
    batch_size: int, num_tokens: int, mask_ratio: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A uniformly random subset of each sample's tokens, masked (MAE, He et al. 2021,
    https://arxiv.org/abs/2111.06377: "random sampling ... without replacement").

    Returns (idx_keep (N, K), idx_mask (N, T − K)), token indices in [0, T) (no class
    token: add the prefix length to use them with lightly's masked ViT), with
    K = int(T · (1 − mask_ratio)), at least 1; on the generator's device."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    num_keep = max(1, int(num_tokens * (1.0 - mask_ratio)))
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=generator.device)
    order = noise.argsort(dim=1)
    return order[:, :num_keep], order[:, num_keep:]


def random_block_mask(
    batch_size: int,
    grid: tuple[int, int],
    scale: tuple[float | Tensor, float | Tensor],
    aspect_ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """One random rectangle of patches per sample (N, h, w), True inside.

    Its area is a fraction of the grid drawn uniformly from ``scale`` (two floats, or two
    (N,) tensors: bounds per sample, iBOT's remaining budget), its aspect ratio
    (height / width) log-uniformly from ``aspect_ratio``, its place uniformly among those
    where it fits: the blocks of I-JEPA (Assran et al. 2023, https://arxiv.org/abs/2301.08243,
    targets scale (0.15, 0.2), aspect (0.75, 1.5); context (0.85, 1.0), aspect 1) and, as a
    union of several, iBOT's and BEiT's block-wise masks."""
    height, width = grid
    device = generator.device
    draw = torch.rand(4, batch_size, generator=generator, device=device)
    area = (scale[0] + (scale[1] - scale[0]) * draw[0]) * height * width
    log_lo, log_hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draw[1])
    block_h = torch.sqrt(area * aspect).round().clamp(1, height)
    block_w = torch.sqrt(area / aspect).round().clamp(1, width)
    top = (draw[2] * (height - block_h + 1)).floor().clamp(max=height - block_h)
    left = (draw[3] * (width - block_w + 1)).floor().clamp(max=width - block_w)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + block_h).view(-1, 1, 1))
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + block_w).view(-1, 1, 1))
    return inside_rows & inside_cols


def indices_of(mask: Tensor, generator: torch.Generator, count: int | None = None) -> Tensor:
    """Token indices (N, k) of True entries of ``mask`` (N, T), the same number for every
    sample (batched models need it): ``count``, or the smallest count of the batch (read on
    the host: one sync), drawn at random where a sample has more (I-JEPA's collator trims its
    masks the same way)."""
    available = int(mask.sum(dim=1).min()) if count is None else count
    noise = torch.rand(mask.shape, generator=generator, device=generator.device)
    # True entries first (noise in [0, 1)), then the others (noise + 2)
    order = (noise + 2.0 * (~mask).float()).argsort(dim=1)
    return order[:, :available]
