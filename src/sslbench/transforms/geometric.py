"""Geometric ops: flips, rotations, and the region moves of the LoRot and DCL pretext tasks.

These are the ops of ``params.GEOMETRIC_OPS``: they move pixels rather than change their
colours. Each op works on a whole batch (N, C, H, W) whose first three channels are colour.
Channels after those move exactly as the pixels: that is how a coordinate map (see
``crops.box_coordinates``) follows a view. The ops that make pretext tasks (``lorot``,
``region_confusion``) return ``(x, labels)``. Deterministic kernels with per-sample arguments
come first, then the random ops ``op(x, gen, params)`` registered in ``registry.OPS``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .batching import coin, for_samples, uniform
from .params import (
    FlipParams,
    LoRotParams,
    RegionConfusionParams,
    Rotate90Params,
    RotateParams,
)

# ---------------------------------------------------------------------------------------------
# Deterministic kernels (per-sample arguments as (N,) tensors)
# ---------------------------------------------------------------------------------------------


def rotate_image(x: Tensor, angle: Tensor, fill: float = 0.0) -> Tensor:
    """Rotate each sample of (N, C, H, W) by angle[N] degrees about its centre.

    As ``torchvision.transforms.v2.functional.rotate(..., BILINEAR, fill=fill)``: positive
    angles turn counter-clockwise as displayed, bilinear sampling, and uncovered corners
    blended towards ``fill`` by the sampled coverage. Channels after the third (coordinate
    maps) are the coverage-weighted mean of the covered neighbours, and NaN where less than
    half of a pixel is covered: a filled corner has no place in the original picture.
    """
    n, c, height, width = x.shape
    rad = angle.to(torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad).view(-1, 1, 1), torch.sin(rad).view(-1, 1, 1)
    # Output pixel centres relative to the image centre, in pixels; their source positions
    # are the inverse rotation, in grid_sample's normalised coordinates (align_corners=False).
    xs = torch.arange(width, device=x.device, dtype=torch.float32) + 0.5 - width / 2
    ys = torch.arange(height, device=x.device, dtype=torch.float32) + 0.5 - height / 2
    ox, oy = xs.view(1, 1, -1), ys.view(1, -1, 1)
    sx = (cos * ox - sin * oy) / (width / 2)
    sy = (sin * ox + cos * oy) / (height / 2)
    grid = torch.stack((sx, sy), dim=-1)  # (N, H, W, 2)
    ones = torch.ones(n, 1, height, width, device=x.device, dtype=x.dtype)
    sampled = F.grid_sample(
        torch.cat((x, ones), dim=1), grid, mode="bilinear", padding_mode="zeros",
        align_corners=False,
    )  # fmt: skip
    cover = sampled[:, -1:]
    pixels = (sampled[:, :3] - fill) * cover + fill
    if c == 3:
        return pixels
    extra = sampled[:, 3:c] / cover.clamp_min(1e-6)
    extra = torch.where(cover >= 0.5, extra, torch.full_like(extra, float("nan")))
    return torch.cat((pixels, extra), dim=1)


def rotate_region(x: Tensor, top: Tensor, left: Tensor, side: Tensor, k: Tensor) -> Tensor:
    """Rotate the square region [top, top + side) x [left, left + side) of each sample by
    k[N] quarter turns counter-clockwise (as ``torch.rot90(region, k, dims=(-2, -1))``); the
    rest of the image is unchanged. All arguments are (N,) long tensors."""
    n, _, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    top, left, side, k = (v.view(-1, 1, 1) for v in (top, left, side, k))
    u, v = rows - top, cols - left  # (N, H, 1), (N, 1, W): position inside the region
    last = side - 1
    # The source of region position (u, v) after k quarter turns (torch.rot90's direction) is
    # (u, v), (v, last - u), (last - u, last - v) or (last - v, u). Its flat offset
    # src_u * W + src_v is always a term of the row plus a term of the column, so the index
    # map costs one broadcast add instead of arithmetic on whole (N, H, W) tensors.
    row_term = torch.where(
        k == 0, u * width, torch.where(k == 1, last - u, torch.where(k == 2, (last - u) * width, u))
    )
    col_term = torch.where(
        k == 0, v, torch.where(k == 1, v * width, torch.where(k == 2, last - v, (last - v) * width))
    )
    inside = ((u >= 0) & (u < side)) & ((v >= 0) & (v < side))
    source = torch.where(inside, (row_term + top * width + left) + col_term, rows * width + cols)
    index = source.view(n, 1, height * width).expand(-1, x.shape[1], -1)
    return x.reshape(n, x.shape[1], height * width).gather(2, index).view_as(x)


def shuffle_patches(x: Tensor, permutation: Tensor, grid: int) -> Tensor:
    """Rearrange a grid x grid tiling of each sample: output patch q shows source patch
    permutation[n, q] (row-major indices). Patches are (side // grid) pixels wide; the strip
    of ``side % grid`` pixels at the right and bottom stays in place."""
    n, c, height, width = x.shape
    patch_h, patch_w = height // grid, width // grid
    tiled_h, tiled_w = grid * patch_h, grid * patch_w
    # (N, C, H, W) -> (N, grid * grid, C, ph, pw): one gather of whole patches.
    patches = (
        x[:, :, :tiled_h, :tiled_w]
        .reshape(n, c, grid, patch_h, grid, patch_w)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(n, grid * grid, c, patch_h, patch_w)
    )
    index = permutation.view(n, grid * grid, 1, 1, 1).expand(-1, -1, c, patch_h, patch_w)
    moved = (
        patches.gather(1, index)
        .view(n, grid, grid, c, patch_h, patch_w)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(n, c, tiled_h, tiled_w)
    )
    if (tiled_h, tiled_w) == (height, width):
        return moved
    out = x.clone()
    out[:, :, :tiled_h, :tiled_w] = moved
    return out


def jittered_order(keys: Tensor) -> Tensor:
    """Stable argsort along the last dim of i + keys: DCL's local shuffle of a sequence.

    With keys in [-k, k], no element moves 2k places or more; with keys 0 nothing moves.
    """
    position = torch.arange(keys.shape[-1], device=keys.device, dtype=keys.dtype)
    return torch.argsort(position + keys, dim=-1, stable=True)


# ---------------------------------------------------------------------------------------------
# Random ops: op(x, gen, params) -> x
# ---------------------------------------------------------------------------------------------


def hflip(x: Tensor, gen: torch.Generator, params: FlipParams) -> Tensor:
    """Mirror each sample left-right with probability ``params.p``."""
    return torch.where(coin(x.shape[0], params.p, gen, x.device), x.flip(-1), x)


def vflip(x: Tensor, gen: torch.Generator, params: FlipParams) -> Tensor:
    """Mirror each sample top-bottom with probability ``params.p``."""
    return torch.where(coin(x.shape[0], params.p, gen, x.device), x.flip(-2), x)


def rotate(x: Tensor, gen: torch.Generator, params: RotateParams) -> Tensor:
    """Rotate each sample by an angle ~ U[degrees] with probability ``params.p``; uncovered
    corners get ``params.fill`` (see ``rotate_image``)."""
    n, dev = x.shape[0], x.device
    apply = coin(n, params.p, gen, dev).view(-1)
    angle = uniform(n, params.degrees[0], params.degrees[1], gen, dev)
    return for_samples(apply, x, lambda part, sel: rotate_image(part, angle[sel], params.fill))


def lorot(x: Tensor, gen: torch.Generator, params: LoRotParams) -> tuple[Tensor, Tensor]:
    """LoRot: rotate a local square of each (square) sample by k ~ uniform{0..3} quarter turns.

    LoRot-I (``variant: I``): side r ~ uniform{min_side .. max_fraction * side} at a uniform
    position; label k. LoRot-E (``variant: E``): one of the four quadrants, q ~ uniform{0..3}
    (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right); label 4 * q + k. With
    ``per_sample_region: false`` the whole batch shares one region (the authors' code).
    Returns (views, labels[N] long).
    """
    n, dev, side = x.shape[0], x.device, x.shape[-1]
    regions = n if params.per_sample_region else 1
    k = torch.randint(0, 4, (n,), generator=gen, device=dev)
    if params.variant == "E":
        quadrant = torch.randint(0, 4, (regions,), generator=gen, device=dev).expand(n)
        r = torch.full((n,), side // 2, device=dev, dtype=torch.long)
        top, left = (quadrant // 2) * (side - r), (quadrant % 2) * (side - r)
        labels = 4 * quadrant + k
    else:
        largest = max(1, min(side, math.floor(params.max_fraction * side)))
        smallest = min(params.min_side, largest)
        r = torch.randint(smallest, largest + 1, (regions,), generator=gen, device=dev)
        u = torch.rand(regions, 2, generator=gen, device=dev)
        # uniform{0 .. side - r} for each corner coordinate, drawn as floor(u * (side - r + 1))
        room = (side - r + 1).to(torch.float32)
        top, left = (u[:, 0] * room).long(), (u[:, 1] * room).long()
        r, top, left = r.expand(n), top.expand(n), left.expand(n)
        labels = k
    return rotate_region(x, top, left, r, k), labels


def region_confusion(
    x: Tensor, gen: torch.Generator, params: RegionConfusionParams
) -> tuple[Tensor, Tensor]:
    """DCL's region confusion with probability ``params.p`` per sample.

    Each row of the grid x grid patches is reordered by ``jittered_order`` of U(-k, k) keys,
    then each column likewise. Returns (views, permutation[N, grid * grid] long): output
    patch q (row-major) shows source patch permutation[n, q]; the identity where not applied.
    """
    n, dev, g = x.shape[0], x.device, params.grid
    apply = coin(n, params.p, gen, dev).view(-1, 1)
    keys = (2.0 * torch.rand(2, n, g, g, generator=gen, device=dev) - 1.0) * params.k
    cols = jittered_order(keys[0])  # cols[n, i, j]: source column of (i, j) in row i
    rows = jittered_order(keys[1]).transpose(1, 2)  # rows[n, i, j]: source row in column j
    source_col = cols.gather(1, rows)  # the row shuffle read at each patch's source row
    permutation = (rows * g + source_col).reshape(n, g * g)
    identity = torch.arange(g * g, device=dev).expand(n, -1)
    permutation = torch.where(apply, permutation, identity)
    return shuffle_patches(x, permutation, g), permutation


def rotate90(x: Tensor, gen: torch.Generator, params: Rotate90Params) -> Tensor:
    """Rotate each square sample by k quarter turns (counter-clockwise as displayed),
    k ~ uniform{1..max_quarter_turns}, with probability ``params.p``; else unchanged."""
    n, dev = x.shape[0], x.device
    apply = coin(n, params.p, gen, dev)
    turns = torch.randint(1, params.max_quarter_turns + 1, (n,), generator=gen, device=dev)
    out = x
    for k in range(1, params.max_quarter_turns + 1):
        out = torch.where((turns == k).view(-1, 1, 1, 1), torch.rot90(x, k, dims=(-2, -1)), out)
    return torch.where(apply, out, x)
