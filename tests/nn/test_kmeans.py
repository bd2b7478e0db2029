"""sslbench's k-means (SMoG's group reset): it finds well separated clusters, Euclidean and
spherical, gives the same centres for the same seed, and always returns k centres, moving
an emptied cluster to the point farthest from its centre."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslbench.nn.kmeans import _fill_empty, kmeans, kmeans_plus_plus

MEANS = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])


def _blobs(
    per_blob: int = 25, spread: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around MEANS (N, 2), and each point's blob (N,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(MEANS)).repeat_interleave(per_blob)
    points = MEANS[labels] + spread * torch.randn(len(labels), 2, generator=generator)
    return points, labels


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labellings split the points alike, whatever the cluster numbers."""
    return torch.equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separated_blobs_are_recovered(seed: int) -> None:
    points, labels = _blobs()
    result = kmeans(points, 4, seed=seed)
    assert result.centres.shape == (4, 2) and result.assignments.shape == (100,)
    assert _same_partition(result.assignments, labels)
    # each centre is its blob's mean: the nearest true mean is within the noise
    nearest = torch.cdist(result.centres, MEANS).min(dim=1)
    assert sorted(nearest.indices.tolist()) == [0, 1, 2, 3]
    assert float(nearest.values.max()) < 0.3
    for k in range(4):
        torch.testing.assert_close(result.centres[k], points[result.assignments == k].mean(dim=0))
    assert 1 <= result.iterations < 300  # it stops once no assignment changes


def test_spherical_clusters_by_direction_whatever_the_norm() -> None:
    generator = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(3, 8, generator=generator), dim=1)
    labels = torch.arange(3).repeat_interleave(20)
    noisy = directions[labels] + 0.05 * torch.randn(60, 8, generator=generator)
    norms = torch.rand(60, 1, generator=generator) * 50 + 0.5  # lengths 0.5 to 50.5
    result = kmeans(noisy * norms, 3, seed=0, spherical=True)
    assert _same_partition(result.assignments, labels)
    torch.testing.assert_close(result.centres.norm(dim=1), torch.ones(3))
    cosine = result.centres @ directions.T
    assert float(cosine.max(dim=1).values.min()) > 0.99


def test_the_same_seed_gives_the_same_centres_and_another_may_not() -> None:
    # Overlapping blobs and more clusters than blobs: the result depends on the seeding.
    points, _ = _blobs(per_blob=40, spread=4.0)
    first = kmeans(points, 7, seed=123)
    again = kmeans(points.clone(), 7, seed=123)
    assert torch.equal(first.centres, again.centres)
    assert torch.equal(first.assignments, again.assignments)
    others = [kmeans(points, 7, seed=s).centres for s in range(3)]
    assert any(not torch.equal(first.centres, c) for c in others)


def test_kmeans_plus_plus_starts_from_distinct_points_while_there_are_some() -> None:
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    generator = torch.Generator().manual_seed(0)
    centres = kmeans_plus_plus(points, 3, generator)
    assert len({tuple(c.tolist()) for c in centres}) == 3  # a 0-distance point is never drawn
    # more centres than distinct points: the draws fall back to uniform, repeating points
    centres = kmeans_plus_plus(points, 4, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(c, p) for p in points) for c in centres)


def test_an_empty_cluster_takes_the_point_farthest_from_its_centre() -> None:
    points = torch.tensor([[0.0], [1.0], [9.0], [2.0]])
    centres = torch.tensor([[0.5], [100.0], [5.0]])  # cluster 1 got no point
    counts = torch.tensor([2.0, 0.0, 2.0])
    distances = torch.tensor([0.25, 0.25, 16.0, 9.0])  # each point's to its own centre
    filled = _fill_empty(centres, points, distances, counts)
    assert filled[1].item() == 9.0  # the farthest point
    assert torch.equal(filled[[0, 2]], centres[[0, 2]])  # the others stay
    assert _fill_empty(centres, points, distances, torch.ones(3)) is centres  # none empty


def test_k_centres_come_back_when_points_repeat() -> None:
    # 2 distinct points and k = 3: duplicate seeds leave a cluster empty at every step
    points = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    result = kmeans(points, 3, seed=0, max_iter=20)
    assert result.centres.shape == (3, 2) and torch.isfinite(result.centres).all()
    assert set(result.assignments.tolist()) <= {0, 1, 2}
    assert _same_partition(result.assignments, torch.tensor([0] * 5 + [1] * 5))


def test_bad_arguments_are_clear_errors() -> None:
    points = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="1 <= k <= N points, got k=6 for N=5"):
        kmeans(points, 6, seed=0)
    with pytest.raises(ValueError, match="shape"):
        kmeans(torch.zeros(5), 2, seed=0)
    with pytest.raises(ValueError, match="max_iter"):
        kmeans(points, 2, seed=0, max_iter=0)
