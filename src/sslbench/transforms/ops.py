"""Batched, device-agnostic augmentation ops.

Every op works on a whole float32 batch ``x`` of shape (N, 3, H, W) with values in [0, 1] and
gives each sample its own random parameters, drawn as tensors from a ``torch.Generator`` that
lives on the batch's device. Nothing loops over samples or reads values back to the host
(no ``.item()``), so the same code runs unchanged, and without syncs, on CPU and CUDA. An op that
fires with probability p is computed for the whole batch and selected per sample with
``torch.where``.

Two layers:

* deterministic kernels with explicit per-sample factors (``adjust_brightness(x, factor[N])``,
  ...), which follow ``torchvision.transforms.v2.functional`` and are tested against it;
* random ops ``op(x, gen, params)`` that draw the factors and call the kernels (``OPS``).

Geometric ops (flips, rotations, LoRot's region, DCL's shuffle) accept extra channels after
the three colour channels and move them exactly as the pixels: that is how a coordinate map
(see ``box_coordinates``) follows a view. The ops that make pretext tasks (``lorot``,
``region_confusion``) return ``(x, labels)``.

Cropping is special: images are cached as S x S squares (the original picture squashed) plus
their original aspect ratio, and crop boxes are sampled in normalised *original* coordinates so
that scale and ratio mean what they mean in torchvision, then resampled with ``roi_align``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from .params import (
    ColorJitterParams,
    FlipParams,
    GaussianBlurParams,
    GrayscaleParams,
    LoRotParams,
    NormalizeParams,
    RegionConfusionParams,
    ResizedCropParams,
    Rotate90Params,
    RotateParams,
    SolarizeParams,
)

# ITU-R 601 luma weights; the red weight is torchvision's 0.2989 (not 0.299) so results match it.
_LUMA = (0.2989, 0.587, 0.114)


def _per_sample(v: Tensor) -> Tensor:
    """View a per-sample vector (N,) as (N, 1, 1, 1) so that it broadcasts over images."""
    return v.to(torch.float32).view(-1, 1, 1, 1)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(N,) float32 samples of U[lo, hi]."""
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _coin(n: int, p: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(N, 1, 1, 1) bool mask, True with probability p, ready for ``torch.where``."""
    return (torch.rand(n, generator=gen, device=device) < p).view(-1, 1, 1, 1)


#: Whether ops may compute only the samples an op applies to. This needs the number of such
#: samples on the host: free on the CPU, a stall of the stream on CUDA, so there (and with
#: False, for tests) every sample is computed and the result selected with torch.where.
SUBSET_ON_CPU = True


def computes_subsets(x: Tensor) -> bool:
    """Whether ``for_samples`` computes only the selected samples of ``x`` (on the CPU)."""
    return SUBSET_ON_CPU and x.device.type == "cpu"


def for_samples(
    mask: Tensor,
    x: Tensor,
    fn: Callable[[Tensor, Tensor | slice], Tensor],
    *,
    inplace: bool = False,
) -> Tensor:
    """``x`` with ``fn`` applied to the samples where mask[N] (bool) is true.

    ``fn(x_part, sel)`` gets the selected samples and ``sel``, which indexes per-sample
    parameters (an index tensor, or ``slice(None)`` when it gets the whole batch). On the CPU
    only the selected samples are computed (written into ``x`` itself with ``inplace``, for a
    caller that owns it); elsewhere all are, without a host sync. Both give the same result.
    """
    if computes_subsets(x):
        index = mask.view(-1).nonzero().view(-1)
        if index.numel() == 0:
            return x
        if index.numel() == x.shape[0]:
            return fn(x, slice(None))
        out = x if inplace else x.clone()
        out[index] = fn(x[index], index)
        return out
    return torch.where(mask.view(-1, 1, 1, 1), fn(x, slice(None)), x)


# ---------------------------------------------------------------------------------------------
# Deterministic kernels (per-sample factors as (N,) tensors)
# ---------------------------------------------------------------------------------------------


def _luma(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) grayscale."""
    r, g, b = x.unbind(-3)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; factor is (N,)."""
    # lerp: other + f * (x - other) in one pass over memory (4 passes as written above)
    return torch.lerp(other.expand_as(x), x, _per_sample(factor)).clamp_(0.0, 1.0)


def to_grayscale(x: Tensor) -> Tensor:
    """Grayscale of (N, 3, H, W), repeated to 3 channels so it can replace a colour image."""
    return _luma(x).expand_as(x).contiguous()


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by factor[N] (0 gives black, 1 the identity), clamped to [0, 1]."""
    return (x * _per_sample(factor)).clamp(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with the mean of its own grayscale version (0 gives a flat grey)."""
    mean = _luma(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its grayscale version (0 gives grayscale, 2 doubles saturation)."""
    return _blend(x, _luma(x), factor)


def _hue_sixths(x: Tensor, v: Tensor, delta: Tensor) -> Tensor:
    """Hue of (..., 3, H, W) in sixths of a turn, in (-1, 5]; v, delta are max, max - min."""
    r, g, b = x.split(1, dim=-3)
    # Grey pixels (delta == 0) get hue 0; the safe divisor avoids 0/0 NaNs there. The hue is
    # measured from the sector of the largest channel (red wins ties, as in torchvision).
    # In-place arithmetic on fresh tensors: these images are tens of MB, and every new
    # tensor of that size costs as much as the arithmetic on the CPU.
    inverse = torch.where(delta > 0, delta, 1.0).reciprocal_()
    from_red = (g - b).mul_(inverse)
    from_green = (b - r).mul_(inverse).add_(2.0)
    from_blue = (r - g).mul_(inverse).add_(4.0)
    return torch.where(v == r, from_red, torch.where(v == g, from_green, from_blue))


def _rgb_from_hue(h6: Tensor, v: Tensor, delta: Tensor) -> Tensor:
    """RGB (..., 3, H, W) from hue in sixths (any real), value v and chroma delta = v * s."""
    # Closed form: channel n in (R, G, B) = (5, 3, 1) is v - delta * clamp(min(k, 4 - k), 0, 1)
    # with k = (n + h6) mod 6; it avoids the six-way sector switch.
    n = torch.arange(5.0, 0.0, -2.0, device=h6.device, dtype=h6.dtype).view(3, 1, 1)  # 5, 3, 1
    k = (n + h6).remainder_(6.0)
    return torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(delta).neg_().add_(v)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV: hue in turns [0, 1), saturation and value in [0, 1]."""
    v = x.amax(dim=-3, keepdim=True)
    delta = v - x.amin(dim=-3, keepdim=True)
    s = delta / torch.where(delta > 0, v, torch.ones_like(v))
    h = torch.remainder(_hue_sixths(x, v, delta) / 6.0, 1.0)
    return torch.cat((h, s, v), dim=-3)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of ``rgb_to_hsv``: (..., 3, H, W) HSV -> RGB in [0, 1]."""
    h, s, v = x.split(1, dim=-3)
    return _rgb_from_hue(6.0 * h, v, v * s)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each image by shift[N] turns (in [-0.5, 0.5]), keeping HSV s and v.

    Same result as RGB -> HSV -> shift -> RGB, but computed directly from max, chroma and hue
    (no saturation division, no stacking), since this is the costliest colour op.
    """
    v = x.amax(dim=-3, keepdim=True)
    delta = v - x.amin(dim=-3, keepdim=True)
    h6 = _hue_sixths(x, v, delta).add_(6.0 * _per_sample(shift))
    return _rgb_from_hue(h6, v, delta).clamp_(0.0, 1.0)


def blur_kernel_size(side: int, fraction: float) -> int:
    """Odd kernel size nearest to fraction * side, at least 3 (and < 2 * side, for reflect pad)."""
    k = 2 * math.floor((fraction * side - 1.0) / 2.0 + 0.5) + 1
    return min(max(3, k), 2 * side - 1)


def sigma_kernel_radius(sigma: Tensor | float) -> Tensor:
    """Half-width ceil(3 sigma) of a Gaussian kernel that keeps 3 standard deviations: the
    ``kernel: sigma`` rule, 2 * ceil(3 sigma) + 1 taps."""
    return torch.ceil(3.0 * torch.as_tensor(sigma, dtype=torch.float32))


def gaussian_blur(
    x: Tensor, sigma: Tensor, kernel_size: int, radius: Tensor | None = None
) -> Tensor:
    """Gaussian blur of (N, C, H, W) with per-sample sigma[N] and an odd ``kernel_size``.

    Separable: reflect-pad once, then a horizontal and a vertical 1-D pass. All N*C planes go
    through one grouped convolution (one group per plane), so each sample gets its own kernel
    without a loop. Same result as torchvision's 2-D kernel (outer product of the 1-D ones).
    ``radius[N]``, if given, truncates each sample's kernel to the taps within that many pixels
    of its centre (its own kernel of 2 * radius + 1 taps, inside the common ``kernel_size``).
    """
    n, c, height, width = x.shape
    half = kernel_size // 2
    if kernel_size % 2 != 1 or half >= min(height, width):
        raise ValueError(f"kernel_size must be odd and < 2 * side, got {kernel_size} for {x.shape}")
    t = torch.arange(kernel_size, device=x.device, dtype=torch.float32) - half
    kernel = torch.exp(-0.5 * (t / sigma.to(torch.float32).view(-1, 1)) ** 2)
    if radius is not None:
        kernel = kernel * (t.abs() <= radius.to(x.device, torch.float32).view(-1, 1))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel[:, None].expand(n, c, kernel_size).reshape(n * c, kernel_size)
    y = F.pad(x.reshape(1, n * c, height, width), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, height, width)


def solarize_image(x: Tensor, threshold: float) -> Tensor:
    """Invert (1 - x) every value at or above ``threshold``, as torchvision's ``solarize``."""
    return torch.where(x >= threshold, 1.0 - x, x)


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
    return torch.where(_coin(x.shape[0], params.p, gen, x.device), x.flip(-1), x)


def vflip(x: Tensor, gen: torch.Generator, params: FlipParams) -> Tensor:
    """Mirror each sample top-bottom with probability ``params.p``."""
    return torch.where(_coin(x.shape[0], params.p, gen, x.device), x.flip(-2), x)


def rotate(x: Tensor, gen: torch.Generator, params: RotateParams) -> Tensor:
    """Rotate each sample by an angle ~ U[degrees] with probability ``params.p``; uncovered
    corners get ``params.fill`` (see ``rotate_image``)."""
    n, dev = x.shape[0], x.device
    apply = _coin(n, params.p, gen, dev).view(-1)
    angle = _uniform(n, params.degrees[0], params.degrees[1], gen, dev)
    return for_samples(apply, x, lambda part, sel: rotate_image(part, angle[sel], params.fill))


def solarize(x: Tensor, gen: torch.Generator, params: SolarizeParams) -> Tensor:
    """Solarise each sample with probability ``params.p`` (see ``solarize_image``)."""
    apply = _coin(x.shape[0], params.p, gen, x.device)
    return torch.where(apply, solarize_image(x, params.threshold), x)


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
    apply = _coin(n, params.p, gen, dev).view(-1, 1)
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
    apply = _coin(n, params.p, gen, dev)
    turns = torch.randint(1, params.max_quarter_turns + 1, (n,), generator=gen, device=dev)
    out = x
    for k in range(1, params.max_quarter_turns + 1):
        out = torch.where((turns == k).view(-1, 1, 1, 1), torch.rot90(x, k, dims=(-2, -1)), out)
    return torch.where(apply, out, x)


def color_jitter(x: Tensor, gen: torch.Generator, params: ColorJitterParams) -> Tensor:
    """Brightness, contrast, saturation and hue jitter in a random order per sample.

    With probability ``params.p`` per sample. The order is a per-sample permutation of the four
    adjustments. Brightness, contrast and saturation are all blends ``f * x + (1 - f) * target``
    with target 0, the grey mean or the grey image, so each of the four steps is one blend with
    a per-sample target and factor (for the samples whose step is one of those three) and one
    hue rotation (for the samples whose step is the hue): no per-sample loop, and on CUDA no
    host sync (see ``for_samples``).

    Draws, in this order: the apply mask (N), brightness, contrast and saturation factors
    (N each), hue shift (N), and (N, 4) uniform keys whose argsort gives each sample's order.
    """
    n, dev = x.shape[0], x.device
    apply = _coin(n, params.p, gen, dev).view(-1)
    b, c, s, h = params.brightness, params.contrast, params.saturation, params.hue
    # All factors are drawn even for zero strengths (then exactly 1, or a 0 hue shift), so the
    # random stream consumed does not depend on the parameters.
    factors = torch.stack(
        [_uniform(n, max(0.0, 1.0 - v), 1.0 + v, gen, dev) for v in (b, c, s)], dim=1
    )  # (N, 3): brightness, contrast, saturation
    shift = _uniform(n, -h, h, gen, dev)
    order = torch.rand(n, 4, generator=gen, device=dev).argsort(dim=1)  # (N, step) -> adjustment

    def blend_step(part: Tensor, sel: Tensor | slice, pick: Tensor) -> Tensor:
        picked = pick[sel].clamp(max=2)  # hue-step samples (3) are masked out by the caller
        gray = _luma(part)
        mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
        view = picked.view(-1, 1, 1, 1)
        target = torch.where(view == 0, 0.0, torch.where(view == 1, mean, gray))
        return _blend(part, target, factors[sel].gather(1, picked[:, None])[:, 0])

    inplace = computes_subsets(x)
    out = x.clone() if inplace else x  # one copy, then updated in place sample by sample
    for step in range(4):
        pick = order[:, step]
        if b > 0 or c > 0 or s > 0:  # with all three at 0 every factor is 1: skip the blend
            out = for_samples(
                apply & (pick != 3),
                out,
                lambda part, sel, pick=pick: blend_step(part, sel, pick),
                inplace=inplace,
            )
        if h > 0:  # a zero hue shift is the identity; skip the costly rotation
            out = for_samples(
                apply & (pick == 3),
                out,
                lambda part, sel: adjust_hue(part, shift[sel]),
                inplace=inplace,
            )
    return out


def grayscale(x: Tensor, gen: torch.Generator, params: GrayscaleParams) -> Tensor:
    """Convert each sample to 3-channel grayscale with probability ``params.p``."""
    apply = _coin(x.shape[0], params.p, gen, x.device)
    return for_samples(apply, x, lambda part, _: to_grayscale(part))


def gaussian_blur_op(x: Tensor, gen: torch.Generator, params: GaussianBlurParams) -> Tensor:
    """Blur each sample with probability ``params.p``, sigma ~ U[sigma], its kernel by the
    ``params.kernel`` rule: ``fraction`` of the side, or 2 * ceil(3 sigma) + 1 taps per sample
    (computed in one kernel of the largest such size for the sigma range, so no host sync).

    Images whose side is <= ``params.skip_at_or_below`` are returned unchanged (SimCLR does not
    blur CIFAR-sized images); the random numbers are drawn anyway to keep streams aligned.
    """
    n, dev = x.shape[0], x.device
    apply = _coin(n, params.p, gen, dev)
    sigma = _uniform(n, params.sigma[0], params.sigma[1], gen, dev)
    side = min(x.shape[-2], x.shape[-1])
    if side <= params.skip_at_or_below:
        return x
    if params.kernel == "sigma":
        # Reflect padding needs half < side: tiny views get the widest kernel that fits.
        half = min(int(sigma_kernel_radius(params.sigma[1])), side - 1)
        radius = sigma_kernel_radius(sigma).clamp_(max=half)
        return for_samples(
            apply, x, lambda part, sel: gaussian_blur(part, sigma[sel], 2 * half + 1, radius[sel])
        )
    kernel_size = blur_kernel_size(side, params.kernel_fraction)
    return for_samples(apply, x, lambda part, sel: gaussian_blur(part, sigma[sel], kernel_size))


def normalize(x: Tensor, gen: torch.Generator | None, params: NormalizeParams) -> Tensor:
    """(x - mean) / std per channel; deterministic (``gen`` is unused and may be None)."""
    # Python scalars per channel rather than a tensor built from a list, which would be a
    # blocking host-to-device copy on CUDA.
    pairs = enumerate(zip(params.mean, params.std, strict=True))
    return torch.cat([(x[:, i : i + 1] - m) / s for i, (m, s) in pairs], dim=1)


# ---------------------------------------------------------------------------------------------
# Cropping from cached squashed squares
# ---------------------------------------------------------------------------------------------


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


# Random ops by name (same names as params.OP_PARAMS); resized_crop needs aspect and size, so
# the pipeline calls it directly.
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


#: op(x, gen, params) -> x, or (x, labels) for the ops in ``params.LABELLED_OPS``.
OPS: dict[str, Callable[..., Tensor | tuple[Tensor, Tensor]]] = {
    "hflip": hflip,
    "vflip": vflip,
    "rotate90": rotate90,
    "rotate": rotate,
    "color_jitter": color_jitter,
    "grayscale": grayscale,
    "gaussian_blur": gaussian_blur_op,
    "solarize": solarize,
    "normalize": normalize,
    "lorot": lorot,
    "region_confusion": region_confusion,
}
