"""The ops of the study's pipelines beyond SimCLR's: vertical flip, free rotation,
solarisation, LoRot and DCL's region confusion; their coordinate maps and pretext labels.

Properties, not pictures: each kernel against torchvision where torchvision has it,
inverses that restore the image, bounds that the papers state, and probabilities.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from sslbench.transforms import (
    FlipParams,
    LoRotParams,
    Pipeline,
    RegionConfusionParams,
    RotateParams,
    SolarizeParams,
    hflip,
    jittered_order,
    lorot,
    region_confusion,
    rotate,
    rotate_image,
    rotate_region,
    shuffle_patches,
    solarize,
    solarize_image,
    vflip,
)
from sslbench.transforms import pipeline as pipeline_module

ATOL = 1e-5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 8, side: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, 3, side, side)


def _distinct(n: int = 8, side: int = 16) -> torch.Tensor:
    """Images whose every pixel differs from every other: a moved pixel is always seen."""
    values = torch.arange(n * 3 * side * side, dtype=torch.float32) / (n * 3 * side * side)
    return values.view(n, 3, side, side)


def _fires(op, params, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    out = op(x, _gen(seed), params)
    out = out[0] if isinstance(out, tuple) else out
    return (out != x).flatten(1).any(dim=1)


# ---------------------------------------------------------------------------------------------
# Flips, rotation, solarisation against torchvision
# ---------------------------------------------------------------------------------------------


def test_vflip_matches_torchvision_and_flips_twice_to_identity() -> None:
    x = _images()
    torch.testing.assert_close(vflip(x, _gen(), FlipParams(p=1.0)), TF.vertical_flip(x))
    for op in (hflip, vflip):
        once = op(x, _gen(0), FlipParams(p=1.0))
        assert not torch.equal(once, x)
        torch.testing.assert_close(op(once, _gen(1), FlipParams(p=1.0)), x, atol=0, rtol=0)


@pytest.mark.parametrize("fill", [0.0, 0.5, 1.0])
def test_rotate_image_matches_torchvision(fill: float) -> None:
    x = _images(n=6, side=17)  # odd side: the centre is a pixel centre
    angles = torch.tensor([0.0, 30.0, -45.0, 90.0, 135.0, -170.0])
    out = rotate_image(x, angles, fill)
    for i, angle in enumerate(angles.tolist()):
        expected = TF.rotate(
            x[i], angle, interpolation=TF.InterpolationMode.BILINEAR, fill=[fill] * 3
        )
        # Measured max deviation ~3e-7; a wrong sign or centre is off by ~0.1 or more.
        torch.testing.assert_close(out[i], expected, atol=ATOL, rtol=0)


def test_rotate_by_a_quarter_turn_is_rot90_and_marks_fill_as_nowhere() -> None:
    x = _images(n=2, side=16)
    torch.testing.assert_close(
        rotate_image(x, torch.full((2,), 90.0)), torch.rot90(x, 1, dims=(-2, -1)), atol=ATOL, rtol=0
    )
    coords = torch.rand(2, 2, 16, 16)
    out = rotate_image(torch.cat((x, coords), dim=1), torch.full((2,), 45.0), fill=0.0)
    extra = out[:, 3:]
    assert torch.isnan(extra[:, :, 0, 0]).all()  # a corner uncovered by a 45-degree turn
    assert torch.isfinite(extra[:, :, 6:10, 6:10]).all()  # the middle always has a source
    assert (out[:, :3, 0, 0] == 0).all()  # fill where nothing is covered


def test_rotate_op_angles_stay_in_range() -> None:
    # A single bright pixel off-centre: the angle it turned through is measurable.
    x = torch.zeros(400, 3, 33, 33)
    x[:, :, 16, 28] = 1.0
    out = rotate(x, _gen(), RotateParams(p=1.0, degrees=[10.0, 40.0]))
    weight = out[:, 0]
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    cy = (weight * ys).sum((1, 2)) / weight.sum((1, 2)) - 16
    cx = (weight * xs).sum((1, 2)) / weight.sum((1, 2)) - 16
    angle = torch.rad2deg(torch.atan2(-cy, cx))  # counter-clockwise as displayed
    assert angle.min() > 9.0 and angle.max() < 41.0
    assert angle.max() - angle.min() > 20.0  # spread over the range, not one value


def test_solarize_matches_torchvision() -> None:
    x = _images()
    for threshold in (0.0, 0.3, 0.5, 1.0):
        torch.testing.assert_close(solarize_image(x, threshold), TF.solarize(x, threshold))
    torch.testing.assert_close(solarize(x, _gen(), SolarizeParams(p=1.0)), TF.solarize(x, 0.5))


@pytest.mark.parametrize(
    ("op", "params"),
    [
        (vflip, FlipParams(p=0.5)),
        (rotate, RotateParams(p=0.3, degrees=[5.0, 30.0])),
        (solarize, SolarizeParams(p=0.2, threshold=0.0)),
        (region_confusion, RegionConfusionParams(p=0.6, grid=4, k=2)),
    ],
)
def test_new_ops_fire_at_their_probability(op, params) -> None:
    n = 2000
    rate = _fires(op, params, torch.rand(n, 3, 8, 8)).float().mean().item()
    standard_error = math.sqrt(params.p * (1 - params.p) / n)
    # region_confusion can draw the identity permutation by chance (rare with k=2 on 4x4)
    assert abs(rate - params.p) < 4 * standard_error + 0.01


# ---------------------------------------------------------------------------------------------
# LoRot
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotate_region_is_rot90_of_the_region_and_rotating_back_restores(k: int) -> None:
    x = _distinct(n=3, side=12)
    top, left, side = torch.tensor([0, 3, 7]), torch.tensor([0, 5, 2]), torch.tensor([12, 4, 5])
    turns = torch.full((3,), k)
    out = rotate_region(x, top, left, side, turns)
    for i in range(3):
        t, c, s = int(top[i]), int(left[i]), int(side[i])
        expected = x[i].clone()
        expected[:, t : t + s, c : c + s] = torch.rot90(x[i, :, t : t + s, c : c + s], k, (-2, -1))
        torch.testing.assert_close(out[i], expected, atol=0, rtol=0)
    back = rotate_region(out, top, left, side, (4 - turns) % 4)
    torch.testing.assert_close(back, x, atol=0, rtol=0)


def _changed_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) bounds of the pixels that differ in one (3, H, W) image."""
    rows, cols = torch.nonzero((before != after).any(dim=0), as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def test_lorot_i_regions_labels_and_undo() -> None:
    n, side = 400, 16
    x = _distinct(n=n, side=side)
    params = LoRotParams(min_side=2, max_fraction=0.5)
    out, labels = lorot(x, _gen(0), params)
    assert labels.dtype == torch.long and set(labels.tolist()) == {0, 1, 2, 3}
    counts = torch.bincount(labels, minlength=4).float() / n
    assert (counts - 0.25).abs().max() < 4 * math.sqrt(0.25 * 0.75 / n)
    torch.testing.assert_close(out[labels == 0], x[labels == 0], atol=0, rtol=0)
    for i in torch.nonzero(labels > 0).flatten()[:50].tolist():
        top, left, bottom, right = _changed_box(x[i], out[i])
        # A region of side r <= side / 2: what changed fits in it (a 180-degree turn of an
        # odd side keeps the centre pixel, so the changed box may be smaller than r).
        assert bottom - top < side // 2 and right - left < side // 2
        # Rotating the changed pixels' region back (found by trying the sides) restores it.
        restored = [
            torch.equal(
                rotate_region(
                    out[i : i + 1],
                    torch.tensor([t]),
                    torch.tensor([c]),
                    torch.tensor([r]),
                    (4 - labels[i : i + 1]) % 4,
                )[0],
                x[i],
            )  # fmt: skip
            for r in range(2, side // 2 + 1)
            for t in range(max(0, bottom - r + 1), top + 1)
            for c in range(max(0, right - r + 1), left + 1)
            if t + r <= side and c + r <= side
        ]
        assert any(restored)


def test_lorot_e_rotates_one_quadrant_with_sixteen_labels() -> None:
    n, side = 800, 8
    x = _distinct(n=n, side=side)
    out, labels = lorot(x, _gen(1), LoRotParams(variant="E"))
    assert set(labels.tolist()) == set(range(16))
    half = side // 2
    for i in range(40):
        quadrant, k = divmod(int(labels[i]), 4)
        top, left = (quadrant // 2) * half, (quadrant % 2) * half
        back = rotate_region(
            out[i : i + 1], torch.tensor([top]), torch.tensor([left]), torch.tensor([half]),
            torch.tensor([(4 - k) % 4]),
        )  # fmt: skip
        torch.testing.assert_close(back[0], x[i], atol=0, rtol=0)


def test_lorot_shared_region_per_batch() -> None:
    x = _distinct(n=64, side=16)
    out, labels = lorot(x, _gen(2), LoRotParams(per_sample_region=False))
    boxes = {_changed_box(x[i], out[i]) for i in range(64) if labels[i] == 2}
    # k = 2 changes every pixel of the region but an odd side's centre: one box for all
    assert len({(t, l_) for t, l_, _, _ in boxes}) == 1


# ---------------------------------------------------------------------------------------------
# DCL region confusion
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_jittered_order_moves_nothing_2k_or_more(k: int) -> None:
    keys = (2 * torch.rand(5000, 7, generator=_gen(k)) - 1) * k
    order = jittered_order(keys)
    assert torch.equal(order.sort(dim=1).values, torch.arange(7).expand(5000, -1))
    displacement = (order - torch.arange(7)).abs()
    assert displacement.max() < 2 * k
    assert displacement.max() == min(2 * k - 1, 6)  # the bound is reached, not just kept
    assert torch.equal(jittered_order(torch.zeros(3, 7)), torch.arange(7).expand(3, -1))


@pytest.mark.parametrize(("grid", "k", "side"), [(7, 2, 28), (7, 1, 32), (4, 2, 30)])
def test_region_confusion_bound_undo_and_layout(grid: int, k: int, side: int) -> None:
    n = 64
    x = _distinct(n=n, side=side)
    out, perm = region_confusion(x, _gen(3), RegionConfusionParams(p=1.0, grid=grid, k=k))
    assert perm.shape == (n, grid * grid) and perm.dtype == torch.long
    assert torch.equal(perm.sort(dim=1).values, torch.arange(grid * grid).expand(n, -1))
    cells = torch.arange(grid * grid)
    assert ((perm // grid - cells // grid).abs() < 2 * k).all()  # rows moved < 2k
    assert ((perm % grid - cells % grid).abs() < 2 * k).all()  # columns moved < 2k
    assert (perm != cells).any(dim=1).float().mean() > 0.9
    # Undo: shuffling by the inverse permutation restores every image exactly.
    torch.testing.assert_close(shuffle_patches(out, perm.argsort(dim=1), grid), x, atol=0, rtol=0)
    # Patch q of the output is patch perm[q] of the input, pixel for pixel; a strip of
    # side % grid pixels at the right and bottom stays in place.
    p = side // grid
    for i in range(3):
        for q in range(grid * grid):
            src = int(perm[i, q])
            r, c, sr, sc = q // grid, q % grid, src // grid, src % grid
            torch.testing.assert_close(
                out[i, :, r * p : (r + 1) * p, c * p : (c + 1) * p],
                x[i, :, sr * p : (sr + 1) * p, sc * p : (sc + 1) * p],
                atol=0, rtol=0,
            )  # fmt: skip
    edge = grid * p
    torch.testing.assert_close(out[:, :, edge:], x[:, :, edge:], atol=0, rtol=0)
    torch.testing.assert_close(out[:, :, :, edge:], x[:, :, :, edge:], atol=0, rtol=0)


def test_region_confusion_with_k_zero_is_the_identity() -> None:
    x = _distinct()
    out, perm = region_confusion(x, _gen(), RegionConfusionParams(p=1.0, grid=4, k=0))
    torch.testing.assert_close(out, x, atol=0, rtol=0)
    assert torch.equal(perm, torch.arange(16).expand(8, -1))


# ---------------------------------------------------------------------------------------------
# Through a pipeline: coordinates follow the pixels, labels come back, seeds repeat
# ---------------------------------------------------------------------------------------------


def _gradient_cache(n: int = 16, side: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached squares whose red channel is the original x fraction and green the y fraction
    of each pixel: a view's colours then say where each of its pixels came from."""
    steps = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    red = steps.view(1, side).expand(side, side)
    green = steps.view(side, 1).expand(side, side)
    image = torch.stack((red, green, torch.zeros(side, side)))
    images = (image * 255).round().to(torch.uint8).expand(n, -1, -1, -1).contiguous()
    aspect = torch.linspace(0.75, 1.5, n)
    return images, aspect


GEOMETRIC_SPEC = {
    "resized_crop": {"scale": [0.3, 1.0]},
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.5},
    "rotate90": {"p": 0.5, "max_quarter_turns": 3},
    "lorot": {"variant": "I"},
    "region_confusion": {"grid": 4, "k": 2},
}


@pytest.mark.parametrize("chunk_views", [None, 5])
@pytest.mark.parametrize("extra", [{}, {"rotate": {"p": 1.0, "degrees": [-40.0, 40.0]}}])
def test_coordinates_follow_the_pixels_through_every_geometric_op(
    extra: dict, chunk_views: int | None, monkeypatch
) -> None:
    if chunk_views is not None:  # the CPU's chunked path: 16 images in chunks of 5 views
        monkeypatch.setattr(pipeline_module, "CPU_CHUNK_ELEMENTS", chunk_views * 3 * 32 * 32)
    images, aspect = _gradient_cache()
    pipe = Pipeline(GEOMETRIC_SPEC | extra, 32)
    made = pipe.views(images, aspect, _gen(5), coordinates=True)
    assert made.coords is not None and set(made.labels) == {"lorot", "region_confusion"}
    assert made.images.shape[0] == made.boxes.shape[0] == made.labels["lorot"].shape[0] == 16
    seen_x, seen_y = made.images[:, 0], made.images[:, 1]
    where_x = made.coords[:, 0] / aspect.view(-1, 1, 1)  # back to fractions of the width
    where_y = made.coords[:, 1]
    known = torch.isfinite(where_x)
    if extra:  # pixels next to a filled corner mix fill into their colour: compare inside
        # (outside the view counts as fill: border pixels are partly uncovered too)
        unknown = torch.nn.functional.pad((~known)[:, None].float(), (1, 1, 1, 1), value=1.0)
        known = torch.nn.functional.max_pool2d(unknown, 3, 1)[:, 0] < 0.5
        assert known.float().mean() > 0.3
    # uint8 quantisation (1/255) and bilinear resampling of a linear ramp: about 0.004
    assert (seen_x - where_x)[known].abs().max() < 0.01
    assert (seen_y - where_y)[known].abs().max() < 0.01


def test_same_seed_same_views_and_labels() -> None:
    images, aspect = _gradient_cache()
    pipe = Pipeline(GEOMETRIC_SPEC, 32)
    a, b = (pipe.views(images, aspect, _gen(9)) for _ in range(2))
    c = pipe.views(images, aspect, _gen(10))
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(a.labels[key], b.labels[key]) for key in a.labels)
    assert not torch.equal(a.images, c.images)


def test_pipeline_refuses_views_too_small_for_its_grid() -> None:
    with pytest.raises(ValueError, match="7x7 grid needs views of at least 7 px"):
        Pipeline({"region_confusion": {"grid": 7}}, 6)
    local = Pipeline({"resized_crop": None, "lorot": {"min_side": 10}}, 32)
    with pytest.raises(ValueError, match="min_side 10 exceeds the 8-px view"):
        local.with_crop([0.05, 0.2], 8)


def test_cpu_subsets_and_the_sync_free_path_give_the_same_views(monkeypatch) -> None:
    """On the CPU ops compute only the samples they apply to; on CUDA every sample, selected
    with torch.where (no host sync). Forcing the second path on the CPU must change nothing."""
    from sslbench.transforms import batching

    spec = {
        "resized_crop": {"scale": [0.2, 1.0]},
        "hflip": None,
        "rotate": {"p": 0.5},
        "color_jitter": {"p": 0.8, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8,
                         "hue": 0.2},
        "grayscale": {"p": 0.3},
        "gaussian_blur": {"p": 0.5, "skip_at_or_below": 0},
        "solarize": {"p": 0.5},
    }  # fmt: skip
    images, aspect = _gradient_cache()
    images = images ^ torch.randint(0, 256, images.shape, generator=_gen(0), dtype=torch.uint8)
    pipe = Pipeline(spec, 24)
    subsets = pipe.views(images, aspect, _gen(4), coordinates=True)
    monkeypatch.setattr(batching, "SUBSET_ON_CPU", False)
    everything = pipe.views(images, aspect, _gen(4), coordinates=True)
    torch.testing.assert_close(subsets.images, everything.images, atol=1e-6, rtol=0)
    torch.testing.assert_close(subsets.coords, everything.coords, equal_nan=True)
