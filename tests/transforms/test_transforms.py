"""Properties of the batched augmentation ops (sslbench.transforms).

Kernels are checked against torchvision.transforms.v2.functional at fixed factors; random ops
for identities, firing rates and value ranges; crops for geometry in original-image coordinates.
Small images keep the whole file fast on CPU.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter

from sslbench.transforms import (
    LABELLED_OPS,
    OP_PARAMS,
    OPS,
    ColorJitterParams,
    FlipParams,
    GaussianBlurParams,
    GrayscaleParams,
    NormalizeParams,
    Pipeline,
    ResizedCropParams,
    Rotate90Params,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    box_coordinates,
    center_view,
    color_jitter,
    crop_to_boxes,
    gaussian_blur,
    gaussian_blur_op,
    grayscale,
    hflip,
    hsv_to_rgb,
    make_generator,
    normalize,
    parse_pipeline_spec,
    resized_crop,
    rgb_to_hsv,
    rotate90,
    sample_crop_boxes,
    to_grayscale,
)

# Measured max deviations from torchvision are ~2e-7 (brightness/contrast/saturation/gray/blur)
# and ~1.5e-6 (hue); the tolerances leave margin but are far below any formula error
# (e.g. luma weight 0.299 instead of 0.2989 already differs by ~1e-4).
ATOL = 1e-5
HUE_ATOL = 2e-5


def _images(n: int = 8, side: int = 16) -> torch.Tensor:
    """Random images plus coarsely quantised ones, whose ties (grey pixels, equal maxima)
    exercise the edge cases of the HSV conversion."""
    torch.manual_seed(0)
    smooth = torch.rand(n, 3, side, side)
    coarse = torch.randint(0, 4, (n, 3, side, side)).float() / 3
    return torch.cat((smooth, coarse))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Kernels against torchvision
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "reference", "low", "high", "atol"),
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0, ATOL),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0, ATOL),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0, ATOL),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5, HUE_ATOL),
    ],
)
def test_color_kernels_match_torchvision(kernel, reference, low, high, atol) -> None:
    x = _images()
    factors = torch.linspace(low, high, x.shape[0])
    out = kernel(x, factors)
    expected = torch.stack([reference(img, float(f)) for img, f in zip(x, factors, strict=True)])
    torch.testing.assert_close(out, expected, atol=atol, rtol=0)


def test_grayscale_and_flip_match_torchvision() -> None:
    x = _images()
    torch.testing.assert_close(
        to_grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=3), atol=ATOL, rtol=0
    )
    flipped = hflip(x, _gen(), FlipParams(p=1.0))
    assert torch.equal(flipped, TF.horizontal_flip(x))


@pytest.mark.parametrize("kernel_size", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(kernel_size: int) -> None:
    x = _images()
    sigma = torch.linspace(0.1, 3.0, x.shape[0])
    out = gaussian_blur(x, sigma, kernel_size)
    expected = torch.stack(
        [
            TF.gaussian_blur(img, [kernel_size, kernel_size], [float(s), float(s)])
            for img, s in zip(x, sigma, strict=True)
        ]
    )
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_sigma_kernel_rule_cuts_each_sample_at_three_sigma() -> None:
    """kernel: sigma gives each sample torchvision's blur with 2 * ceil(3 sigma) + 1 taps,
    whatever the others' sigmas (they share one kernel array of the range's largest size)."""
    x = _images(side=40)
    params = GaussianBlurParams(p=1.0, sigma=[0.2, 2.0], kernel="sigma", skip_at_or_below=0)
    out = gaussian_blur_op(x, _gen(3), params)
    gen = _gen(3)
    torch.rand(x.shape[0], generator=gen)  # the apply draw
    sigma = 0.2 + 1.8 * torch.rand(x.shape[0], generator=gen)
    for img, s, got in zip(x, sigma, out, strict=True):
        taps = 2 * math.ceil(3 * float(s)) + 1
        expected = TF.gaussian_blur(img, [taps, taps], [float(s), float(s)])
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_sigma_kernel_rule_blurs_small_views_as_pil_does() -> None:
    """At 32 px SimCLR's 10% rule cuts sigma 2 down to 3 taps; lightly's baseline blurs with
    PIL's GaussianBlur(radius=sigma), which the sigma rule follows far more closely."""
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    pil = np.stack(
        [
            np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(radius=2.0)))
            for p in pictures
        ]
    )
    reference = torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255
    x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 255
    errors = {}
    for rule in ("fraction", "sigma"):
        params = GaussianBlurParams(p=1.0, sigma=[2.0, 2.0], kernel=rule, skip_at_or_below=0)
        # PIL clamps at the border where the blur reflects: compare the inside only.
        blurred = gaussian_blur_op(x, _gen(), params)
        errors[rule] = float((blurred - reference)[..., 6:-6, 6:-6].abs().mean())
    assert errors["sigma"] < 0.01 < errors["fraction"]
    assert errors["sigma"] < errors["fraction"] / 5


def test_hsv_round_trip() -> None:
    x = _images()
    hsv = rgb_to_hsv(x)
    assert hsv.min() >= 0 and hsv.max() <= 1 and hsv[:, 0].max() < 1
    torch.testing.assert_close(hsv_to_rgb(hsv), x, atol=ATOL, rtol=0)


def test_blur_kernel_size() -> None:
    assert blur_kernel_size(224, 0.1) == 23  # 22.4 -> nearest odd
    assert blur_kernel_size(96, 0.1) == 9  # 9.6 -> 9 (11 is further)
    assert blur_kernel_size(16, 0.1) == 3  # at least 3
    assert blur_kernel_size(4, 1.0) == 5  # 4 is halfway between 3 and 5: round up, < 2 * side


# ---------------------------------------------------------------------------------------------
# Random ops: identities, firing rates, ranges
# ---------------------------------------------------------------------------------------------


def test_identities() -> None:
    x = _images()
    twice = hflip(hflip(x, _gen(1), FlipParams(p=1.0)), _gen(2), FlipParams(p=1.0))
    assert torch.equal(twice, x)
    still = ColorJitterParams(p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert torch.equal(color_jitter(x, _gen(), still), x)
    big = torch.rand(4, 3, 40, 40)  # larger than skip_at_or_below, so blur is really computed
    assert torch.equal(gaussian_blur_op(big, _gen(), GaussianBlurParams(p=0.0)), big)
    assert torch.equal(color_jitter(x, _gen(), ColorJitterParams(p=0.0)), x)
    assert torch.equal(grayscale(x, _gen(), GrayscaleParams(p=0.0)), x)
    assert torch.equal(hflip(x, _gen(), FlipParams(p=0.0)), x)


def test_blur_skipped_on_small_images() -> None:
    x = _images(side=32)
    assert torch.equal(gaussian_blur_op(x, _gen(), GaussianBlurParams(p=1.0)), x)
    y = gaussian_blur_op(x, _gen(), GaussianBlurParams(p=1.0, skip_at_or_below=31))
    assert not torch.equal(y, x)


def test_normalize() -> None:
    x = _images()
    params = NormalizeParams()
    mean = torch.tensor(params.mean).view(1, 3, 1, 1)
    std = torch.tensor(params.std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, None, params), (x - mean) / std)


@pytest.mark.parametrize(
    ("op", "params"),
    [
        (hflip, FlipParams(p=0.5)),
        (color_jitter, ColorJitterParams(p=0.8)),
        (grayscale, GrayscaleParams(p=0.2)),
        (gaussian_blur_op, GaussianBlurParams(p=0.5, skip_at_or_below=0)),
    ],
)
def test_ops_fire_at_their_probability(op, params) -> None:
    # A random image is changed by any of these ops with probability 1 when the op fires.
    n = 2000
    torch.manual_seed(0)
    x = torch.rand(n, 3, 8, 8)
    changed = (op(x, _gen(), params) != x).flatten(1).any(dim=1).float().mean().item()
    standard_error = math.sqrt(params.p * (1 - params.p) / n)
    assert abs(changed - params.p) < 4 * standard_error


def test_single_jitter_is_a_per_sample_factor_in_range() -> None:
    # Only brightness active, no clamping (x <= 0.5): each output is its input times a factor.
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 0.4 + 0.1
    params = ColorJitterParams(p=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)
    ratio = color_jitter(x, _gen(), params) / x
    per_sample = ratio.flatten(1)
    torch.testing.assert_close(per_sample.min(1).values, per_sample.max(1).values)
    assert per_sample.min() >= 0.6 - 1e-6 and per_sample.max() <= 1.4 + 1e-6
    assert per_sample.std() > 0.1  # factors differ between samples


def test_color_jitter_composes_kernels_in_drawn_order() -> None:
    # Replays the documented draw order (apply mask, 3 factors, hue shift, order keys) with a
    # twin generator, then applies the reference kernels sample by sample.
    x = _images(n=16, side=8)
    n, params = x.shape[0], ColorJitterParams(p=0.7, hue=0.3)
    out = color_jitter(x, _gen(5), params)
    twin = _gen(5)
    apply = torch.rand(n, generator=twin) < params.p
    factors = [0.6 + 0.8 * torch.rand(n, generator=twin) for _ in range(3)]
    shift = -0.3 + 0.6 * torch.rand(n, generator=twin)
    order = torch.rand(n, 4, generator=twin).argsort(dim=1)
    kernels = [
        (TF.adjust_brightness, factors[0]),
        (TF.adjust_contrast, factors[1]),
        (TF.adjust_saturation, factors[2]),
        (TF.adjust_hue, shift),
    ]
    for i in range(n):
        expected = x[i]
        if apply[i]:
            for j in order[i].tolist():
                kernel, factor = kernels[j]
                expected = kernel(expected, float(factor[i]))
        torch.testing.assert_close(out[i], expected, atol=HUE_ATOL, rtol=0)


def test_hue_only_jitter_keeps_value_and_chroma() -> None:
    # A hue rotation keeps each pixel's max (HSV value) and max - min (chroma).
    x = _images()
    params = ColorJitterParams(p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5)
    y = color_jitter(x, _gen(), params)
    assert not torch.equal(y, x)
    for stat in (lambda t: t.amax(1), lambda t: t.amax(1) - t.amin(1)):
        torch.testing.assert_close(stat(y), stat(x), atol=ATOL, rtol=0)


def test_ops_keep_shape_dtype_range() -> None:
    x = _images()
    gen = _gen()
    for name, op in OPS.items():
        if name == "normalize":
            continue
        y = op(x, gen, OP_PARAMS[name]())
        if name in LABELLED_OPS:
            y, labels = y
            assert labels.shape[0] == x.shape[0] and labels.dtype == torch.long
        assert y.shape == x.shape and y.dtype == torch.float32
        assert y.min() >= 0 and y.max() <= 1, name


# ---------------------------------------------------------------------------------------------
# Crops
# ---------------------------------------------------------------------------------------------


def test_crop_boxes_in_range() -> None:
    params = ResizedCropParams()
    n = 2000
    aspect = torch.exp(torch.empty(n).uniform_(math.log(0.5), math.log(2.0)))
    boxes = sample_crop_boxes(aspect, _gen(), params)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 1).all() and (y1 <= 1).all()
    w, h = x1 - x0, y1 - y0
    area, ratio = w * h, w * aspect / h  # ratio in original pixels
    eps = 1e-5
    assert area.min() >= params.scale[0] - eps and area.max() <= params.scale[1] + eps
    assert ratio.min() >= params.ratio[0] - eps and ratio.max() <= params.ratio[1] + eps
    assert area.std() > 0.1 and x0.std() > 0.05  # actually random


def test_crop_fallback_is_centred_with_clamped_ratio() -> None:
    # A 4:1 picture cannot hold 90% of its area at ratio <= 4/3: centre crop of ratio 4/3.
    boxes = sample_crop_boxes(torch.full((5,), 4.0), _gen(), ResizedCropParams(scale=[0.9, 1.0]))
    expected = torch.tensor([1 / 3, 0.0, 2 / 3, 1.0]).expand(5, 4)
    torch.testing.assert_close(boxes, expected)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_full_crop_equals_plain_resize(size: int) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x = images.float() / 255
    params = ResizedCropParams(scale=[1.0, 1.0], ratio=[1.0, 1.0])
    out = resized_crop(images, _gen(), params, aspect=torch.ones(4), size=size)
    if size == 32:
        expected = x
    elif size < 32:
        expected = F.interpolate(x, size=size, mode="area")
    else:
        expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_crop_keeps_gradient_monotone() -> None:
    ramp = torch.linspace(0, 1, 48).expand(16, 3, 48, 48)
    aspect = torch.linspace(0.5, 2.0, 16)
    out = resized_crop(ramp, _gen(), ResizedCropParams(), aspect=aspect, size=20)
    assert (out.diff(dim=-1) >= -1e-6).all()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("aspect", [2.0, 0.5])
def test_center_view_follows_aspect(aspect: float) -> None:
    # Pixel i of the stored square holds (i + 0.5) / S: the value is the normalised coordinate,
    # which bilinear sampling reproduces exactly, so the view reveals which region it shows.
    side, size = 40, 10
    coord = (torch.arange(side) + 0.5) / side
    stored = torch.stack((coord.expand(side, side), coord[:, None].expand(side, side)))
    stored = stored.expand(2, 2, side, side)
    images = torch.cat((stored, torch.zeros(2, 1, side, side)), dim=1)
    out = center_view(images, torch.full((2,), aspect), size)
    centres = (torch.arange(size) + 0.5) / size
    half = 0.25 + 0.5 * centres  # middle half of the stored (squashed) axis
    across, along = (half, centres) if aspect > 1 else (centres, half)
    torch.testing.assert_close(out[:, 0], across.expand(2, size, size), atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:, 1], along[:, None].expand(2, size, size), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------------------------

FULL_SPEC = {
    "resized_crop": None,
    "hflip": None,
    "color_jitter": None,
    "grayscale": None,
    "gaussian_blur": {"skip_at_or_below": 0},
}


def _uint8_batch(n: int = 8, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)
    return images, torch.linspace(0.75, 1.5, n)


def test_same_seed_same_views_different_seed_different_views() -> None:
    pipe = Pipeline(FULL_SPEC, 16)
    images, aspect = _uint8_batch()
    a = pipe(images, aspect, make_generator(7, "cpu", 0, 1))
    b = pipe(images, aspect, make_generator(7, "cpu", 0, 1))
    c = pipe(images, aspect, make_generator(8, "cpu", 0, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_make_generator_streams_differ() -> None:
    draws = {
        ids: torch.rand(4, generator=make_generator(0, "cpu", *ids))
        for ids in [(), (0,), (1,), (0, 1), (1, 0), (0, 0)]
    }
    values = list(draws.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not torch.equal(values[i], values[j])
    torch.testing.assert_close(torch.rand(4, generator=make_generator(0, "cpu", 1)), draws[(1,)])


# ---------------------------------------------------------------------------------------------
# Spec parsing and the pipeline
# ---------------------------------------------------------------------------------------------


def test_params_import_without_torch() -> None:
    # The config validator imports the parameters before torch; keep that import torch-free.
    code = "import sys, sslbench.transforms.params; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_spec_unknown_op() -> None:
    with pytest.raises(ValueError) as info:
        parse_pipeline_spec({"hflip": None, "blurr": {"p": 0.5}})
    message = str(info.value)
    assert "\n" not in message and "'blurr'" in message
    assert ", ".join(sorted(OP_PARAMS)) in message


def test_parse_spec_unknown_parameter_and_bad_values() -> None:
    with pytest.raises(ValueError) as info:
        parse_pipeline_spec({"color_jitter": {"strength": 0.5}})
    message = str(info.value)
    assert "\n" not in message and "'strength'" in message and "color_jitter" in message
    assert "brightness, contrast, hue, p, saturation" in message
    for bad in ({"hflip": {"p": "often"}}, {"hflip": {"p": 1.5}}, {"normalize": {"std": [1]}}):
        with pytest.raises(ValueError, match=r"^[^\n]*$"):
            parse_pipeline_spec(bad)


def test_parse_spec_op_used_twice() -> None:
    parsed = parse_pipeline_spec({"hflip": None, "flip_again": {"op": "hflip", "p": 1}})
    assert parsed == [
        ("hflip", "hflip", FlipParams(p=0.5)),
        ("flip_again", "hflip", FlipParams(p=1.0)),
    ]
    # ... and runs: two certain flips cancel out.
    x = _images()
    pipe = Pipeline({"a": {"op": "hflip", "p": 1}, "b": {"op": "hflip", "p": 1}}, 16)
    torch.testing.assert_close(pipe(x, torch.ones(x.shape[0]), _gen()), x)


def test_pipeline_rejects_late_crop() -> None:
    with pytest.raises(ValueError, match="resized_crop"):
        Pipeline({"hflip": None, "resized_crop": None}, 16)


def test_pipeline_end_to_end() -> None:
    images, aspect = _uint8_batch()
    plain = Pipeline(FULL_SPEC, 24)
    normed = Pipeline({**FULL_SPEC, "normalize": None}, 24)
    made = plain.views(images, aspect, _gen(3))
    x, boxes = made.images, made.boxes
    y = normed(images, aspect, _gen(3))
    assert x.shape == y.shape == (8, 3, 24, 24) and y.dtype == torch.float32
    assert boxes.shape == (8, 4)
    assert x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(y, normalize(x, None, NormalizeParams()))
    assert "color_jitter" in repr(normed) and "normalize" in normed.describe()
    # Deterministic evaluation view: centre square, then the same normalisation.
    ev = normed.eval_view(images, aspect)
    torch.testing.assert_close(
        ev, normalize(center_view(images, aspect, 24), None, NormalizeParams())
    )
    # Without a crop, the pipeline starts from the centre view.
    torch.testing.assert_close(Pipeline({"normalize": None}, 24)(images, aspect, _gen()), ev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_never_syncs() -> None:
    x = _images()
    factors = torch.linspace(0.0, 1.0, x.shape[0])
    cuda_x, cuda_f = x.cuda(), factors.cuda()
    for kernel in (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue):
        torch.testing.assert_close(
            kernel(cuda_x, cuda_f).cpu(), kernel(x, factors), atol=ATOL, rtol=0
        )
    torch.testing.assert_close(
        gaussian_blur(cuda_x, cuda_f + 0.5, 5).cpu(),
        gaussian_blur(x, factors + 0.5, 5),
        atol=ATOL,
        rtol=0,
    )
    images, aspect = (t.cuda() for t in _uint8_batch())
    pipe = Pipeline({**FULL_SPEC, "normalize": None}, 24)
    gen = make_generator(0, "cuda", 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pipe(images, aspect, gen)
        ev = pipe.eval_view(images, aspect)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == ev.shape == (8, 3, 24, 24) and out.device.type == "cuda"


def test_coordinate_maps_follow_crop_and_flip_by_hand() -> None:
    # One 2:1 picture, crop box x in [0.5, 1.0], y in [0, 0.5] (normalised), 4-px output.
    aspect = torch.tensor([2.0])
    boxes = torch.tensor([[0.5, 0.0, 1.0, 0.5]])
    coords = box_coordinates(boxes, aspect, 4)
    # Pixel centres at 1/8, 3/8, 5/8, 7/8 of the box; x in units of the height (times 2).
    expected_x = (0.5 + 0.5 * torch.tensor([0.125, 0.375, 0.625, 0.875])) * 2.0
    expected_y = 0.5 * torch.tensor([0.125, 0.375, 0.625, 0.875])
    torch.testing.assert_close(coords[0, 0, 2], expected_x)
    torch.testing.assert_close(coords[0, 1, :, 1], expected_y)


def test_pipeline_coordinates_move_with_the_pixels() -> None:
    images, aspect = _uint8_batch()
    pipe = Pipeline({"resized_crop": {"scale": [0.3, 1.0]}, "hflip": {"p": 0.5}}, 16)
    made = pipe.views(images, aspect, _gen(0), coordinates=True)
    x, boxes, coords = made.images, made.boxes, made.coords
    assert coords is not None and coords.shape == (8, 2, 16, 16)
    unflipped = box_coordinates(boxes, aspect, 16)
    flipped = (coords[:, 0, :, 0] > coords[:, 0, :, -1]).all(dim=1)  # x decreases left to right
    assert 0 < int(flipped.sum()) < 8  # with p=0.5 over 8 samples (seeded), both occur
    torch.testing.assert_close(coords[~flipped], unflipped[~flipped])
    torch.testing.assert_close(coords[flipped], unflipped[flipped].flip(-1))
    # The pixels moved the same way: the views equal the unflipped crop, flipped where the map is.
    plain = crop_to_boxes(images, boxes, 16)
    torch.testing.assert_close(x[flipped], plain[flipped].flip(-1))
    torch.testing.assert_close(x[~flipped], plain[~flipped])


def test_with_crop_changes_only_crop_scale_and_size() -> None:
    pipe = Pipeline(FULL_SPEC, 32)
    local = pipe.with_crop([0.05, 0.14], 12)
    assert local.size == 12 and local.crop is not None
    assert list(local.crop.scale) == [0.05, 0.14]
    assert [op for _, op, _ in local.spec] == [op for _, op, _ in pipe.spec]
    images, aspect = _uint8_batch()
    boxes = local.views(images, aspect, _gen(1)).boxes
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (area <= 0.14 + 1e-5).all()


def test_rotate90_matches_torchvision_and_fires_at_its_rate() -> None:
    x = torch.rand(64, 3, 16, 16)
    turned = rotate90(x, _gen(0), Rotate90Params(p=1.0))
    for i in range(4):  # torchvision rotates counter-clockwise for positive angles
        torch.testing.assert_close(turned[i], TF.rotate(x[i], 90.0))
    any_turn = rotate90(x, _gen(1), Rotate90Params(p=1.0, max_quarter_turns=3))
    for i in range(8):
        assert any(torch.equal(any_turn[i], TF.rotate(x[i], 90.0 * k)) for k in (1, 2, 3))
    big = torch.rand(4000, 1, 2, 2)
    fired = (rotate90(big, _gen(2), Rotate90Params(p=0.3)) != big).flatten(1).any(dim=1)
    assert abs(fired.float().mean().item() - 0.3) < 4 * (0.3 * 0.7 / 4000) ** 0.5
    torch.testing.assert_close(rotate90(x, _gen(3), Rotate90Params(p=0.0)), x)
