"""Photometric ops (colour, blur, solarisation, normalisation): kernels and random ops.

They change pixel values and never move a pixel (the ops of ``params.GEOMETRIC_OPS`` live in
``geometric``).

Two layers:

* deterministic kernels with explicit per-sample factors (``adjust_brightness(x, factor[N])``,
  ...), which follow ``torchvision.transforms.v2.functional`` and are tested against it;
* random ops ``op(x, gen, params)`` that draw the factors and call the kernels (registered in
  ``registry.OPS``).

They take float32 batches (N, 3, H, W) with values in [0, 1]; ``normalize`` maps out of that
range, so pipelines run it last.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .batching import coin, computes_subsets, for_samples, per_sample, uniform
from .params import (
    ColorJitterParams,
    GaussianBlurParams,
    GrayscaleParams,
    NormalizeParams,
    SolarizeParams,
)

# ITU-R 601 luma weights; the red weight is torchvision's 0.2989 (not 0.299) so results match it.
_LUMA = (0.2989, 0.587, 0.114)

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
    return torch.lerp(other.expand_as(x), x, per_sample(factor)).clamp_(0.0, 1.0)


def to_grayscale(x: Tensor) -> Tensor:
    """Grayscale of (N, 3, H, W), repeated to 3 channels so it can replace a colour image."""
    return _luma(x).expand_as(x).contiguous()


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by factor[N] (0 gives black, 1 the identity), clamped to [0, 1]."""
    return (x * per_sample(factor)).clamp(0.0, 1.0)


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
    h6 = _hue_sixths(x, v, delta).add_(6.0 * per_sample(shift))
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


# ---------------------------------------------------------------------------------------------
# Random ops: op(x, gen, params) -> x
# ---------------------------------------------------------------------------------------------


def solarize(x: Tensor, gen: torch.Generator, params: SolarizeParams) -> Tensor:
    """Solarise each sample with probability ``params.p`` (see ``solarize_image``)."""
    apply = coin(x.shape[0], params.p, gen, x.device)
    return torch.where(apply, solarize_image(x, params.threshold), x)


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
    apply = coin(n, params.p, gen, dev).view(-1)
    b, c, s, h = params.brightness, params.contrast, params.saturation, params.hue
    # All factors are drawn even for zero strengths (then exactly 1, or a 0 hue shift), so the
    # random stream consumed does not depend on the parameters.
    factors = torch.stack(
        [uniform(n, max(0.0, 1.0 - v), 1.0 + v, gen, dev) for v in (b, c, s)], dim=1
    )  # (N, 3): brightness, contrast, saturation
    shift = uniform(n, -h, h, gen, dev)
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
    apply = coin(x.shape[0], params.p, gen, x.device)
    return for_samples(apply, x, lambda part, _: to_grayscale(part))


def gaussian_blur_op(x: Tensor, gen: torch.Generator, params: GaussianBlurParams) -> Tensor:
    """Blur each sample with probability ``params.p``, sigma ~ U[sigma], its kernel by the
    ``params.kernel`` rule: ``fraction`` of the side, or 2 * ceil(3 sigma) + 1 taps per sample
    (computed in one kernel of the largest such size for the sigma range, so no host sync).

    Images whose side is <= ``params.skip_at_or_below`` are returned unchanged (SimCLR does not
    blur CIFAR-sized images); the random numbers are drawn anyway to keep streams aligned.
    """
    n, dev = x.shape[0], x.device
    apply = coin(n, params.p, gen, dev)
    sigma = uniform(n, params.sigma[0], params.sigma[1], gen, dev)
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
