"""Token masks drawn per sample from a seeded generator (sslbench.nn.masking): the shapes
the masked-image methods need, reproducible from the seed, different from step to step."""

from __future__ import annotations

import pytest
import torch

from sslbench.nn.masking import indices_of, random_block_mask, random_token_mask


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_token_mask_splits_each_samples_tokens_into_kept_and_masked() -> None:
    keep, masked = random_token_mask(8, 64, 0.75, generator(0))
    assert keep.shape == (8, 16) and masked.shape == (8, 48)
    every = torch.cat([keep, masked], dim=1).sort(dim=1).values
    assert torch.equal(every, torch.arange(64).expand(8, 64))  # a partition of the tokens
    assert len({tuple(row.tolist()) for row in keep}) == 8  # each sample its own


def test_masks_are_reproducible_from_the_seed_and_differ_between_seeds() -> None:
    first = random_token_mask(4, 16, 0.5, generator(1))[0]
    assert torch.equal(first, random_token_mask(4, 16, 0.5, generator(1))[0])
    assert not torch.equal(first, random_token_mask(4, 16, 0.5, generator(2))[0])


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_a_mask_ratio_outside_0_1_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        random_token_mask(2, 16, ratio, generator(0))


def test_a_block_is_one_rectangle_of_the_drawn_area_and_aspect() -> None:
    blocks = random_block_mask(256, (14, 14), (0.15, 0.2), (0.75, 1.5), generator(0))
    assert blocks.shape == (256, 14, 14) and blocks.dtype == torch.bool
    rows, cols = blocks.any(dim=2), blocks.any(dim=1)
    heights, widths = rows.sum(dim=1), cols.sum(dim=1)
    # a rectangle: as many cells as its rows times its columns, rows and columns contiguous
    assert torch.equal(blocks.sum(dim=(1, 2)), heights * widths)
    for line in (rows, cols):
        first = line.float().argmax(dim=1)
        span = torch.arange(14).expand(256, 14)
        within = (span >= first[:, None]) & (span < (first + line.sum(dim=1))[:, None])
        assert torch.equal(line, within)
    area = (heights * widths).float() / 196
    assert 0.1 < area.min() and area.max() < 0.26  # (0.15, 0.2), rounded to whole cells
    assert len({(int(h), int(w)) for h, w in zip(heights, widths, strict=True)}) > 3
    # every place is drawn, the corners too: the blocks cover the whole grid between them
    many = random_block_mask(2048, (14, 14), (0.15, 0.2), (0.75, 1.5), generator(1))
    assert many.any(dim=0).all()


def test_indices_of_takes_the_same_count_of_true_tokens_from_every_sample() -> None:
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, [1, 3, 5]] = True
    mask[1, [0, 2, 4, 6, 8]] = True
    mask[2, [9, 7, 5, 3]] = True
    picked = indices_of(mask, generator(0))
    assert picked.shape == (3, 3)  # the smallest count
    assert bool(mask.gather(1, picked).all())
    assert indices_of(mask, generator(0), count=2).shape == (3, 2)
