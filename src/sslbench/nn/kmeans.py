"""k-means clustering in torch: k-means++ seeding, then Lloyd iterations.

SMoG (:mod:`sslbench.methods.smog`) resets its group features to the k-means centres of its
memory bank every few hundred steps. lightly's benchmark calls scikit-learn's ``KMeans``,
which sslbench does not depend on; this one runs on the bank's own device and is
deterministic for a seed, so that every DDP process, holding the same bank, computes the
same centres without any communication.

Algorithm (Arthur & Vassilvitskii 2007, "k-means++: The Advantages of Careful Seeding";
Lloyd 1982): the first centre is a point drawn uniformly, each further centre a point drawn
with probability proportional to its squared distance to the nearest centre so far; then
each point is assigned to its nearest centre and each centre moved to the mean of its
points, until no assignment changes or ``max_iter`` iterations have run. A cluster left
empty takes the point farthest from its own centre (scikit-learn's rule), so that exactly
``k`` centres come back. ``spherical=True`` clusters by cosine similarity instead: the
points and the centres are L2-normalised (spherical k-means, Dhillon & Modha 2001), which
makes the nearest centre the most similar one in direction.

Shapes: points (N, D) → centres (k, D), assignments (N,) in [0, k).

Determinism: the random draws come from a generator seeded by ``seed`` on the points'
device, and the sums are matrix products with a one-hot matrix rather than atomic scatter
additions (which are not reproducible on a GPU), so the same points and seed give the same
centres on the same hardware.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class KMeansResult(NamedTuple):
    """What :func:`kmeans` found: ``centres`` (k, D), ``assignments`` (N,) of each point
    to its centre, and the number of Lloyd ``iterations`` run."""

    centres: Tensor
    assignments: Tensor
    iterations: int


def squared_distances(points: Tensor, centres: Tensor) -> Tensor:
    """(N, k) squared Euclidean distances ‖x − c‖², as ‖x‖² − 2·x·c + ‖c‖² (one matrix
    product), clamped at 0 against rounding."""
    cross = points @ centres.T
    return (
        points.pow(2).sum(dim=1, keepdim=True) - 2 * cross + centres.pow(2).sum(dim=1)
    ).clamp_min_(0.0)


def kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k initial centres (k, D) chosen among ``points`` by k-means++ seeding. When fewer
    than k distinct points exist (every remaining distance is 0), the next centres are
    drawn uniformly, repeating points."""
    n = points.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=points.device)
    chosen = [first]
    nearest = squared_distances(points, points[first]).squeeze(1)
    for _ in range(1, k):
        # A distribution over the points; uniform when every point is already a centre.
        weights = torch.where(nearest.sum() > 0, nearest, torch.ones_like(nearest))
        index = torch.multinomial(weights, 1, generator=generator)
        chosen.append(index)
        nearest = torch.minimum(nearest, squared_distances(points, points[index]).squeeze(1))
    return points[torch.cat(chosen)].clone()


def _fill_empty(centres: Tensor, points: Tensor, distances: Tensor, counts: Tensor) -> Tensor:
    """Centres with the empty clusters moved to the points farthest from their own centres
    (a different point for each empty cluster, farthest first)."""
    empty = (counts == 0).nonzero().squeeze(1)
    if empty.numel() == 0:
        return centres
    farthest = torch.argsort(distances, descending=True, stable=True)[: empty.numel()]
    centres = centres.clone()
    centres[empty[: farthest.numel()]] = points[farthest]
    return centres


def kmeans(
    points: Tensor,
    k: int,
    *,
    seed: int,
    max_iter: int = 300,
    spherical: bool = False,
) -> KMeansResult:
    """Cluster ``points`` (N, D) into ``k`` clusters.

    Args:
        points: the data, (N, D), N ≥ k; computed in float32 whatever its dtype.
        k: the number of clusters.
        seed: seeds the k-means++ draws (a generator on the points' device): the same
            points and seed give the same result.
        max_iter: the most Lloyd iterations (scikit-learn's default, 300); the loop ends
            earlier once no assignment changes.
        spherical: cluster L2-normalised points by cosine similarity, centres normalised.

    Returns:
        a :class:`KMeansResult`: centres (k, D) (unit length with ``spherical``), the
        points' assignments (N,) to them, and the iterations run.
    """
    if points.ndim != 2:
        raise ValueError(f"k-means needs points of shape (N, D), got {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= N points, got k={k} for N={n}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    x = points.detach().float()
    if spherical:
        x = F.normalize(x, dim=1)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    centres = kmeans_plus_plus(x, k, generator)
    assignments = torch.full((n,), -1, dtype=torch.long, device=x.device)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        distances = squared_distances(x, centres)
        new = distances.argmin(dim=1)
        if torch.equal(new, assignments):
            break
        assignments = new
        one_hot = F.one_hot(assignments, k).to(x.dtype)  # (N, k)
        counts = one_hot.sum(dim=0)
        sums = one_hot.T @ x  # a matrix product: reproducible, unlike index_add_ on a GPU
        filled = counts > 0
        centres = torch.where(filled[:, None], sums / counts.clamp_min(1.0)[:, None], centres)
        own = distances.gather(1, assignments[:, None]).squeeze(1)
        centres = _fill_empty(centres, x, own, counts)
        if spherical:
            centres = F.normalize(centres, dim=1)
    return KMeansResult(centres=centres, assignments=assignments, iterations=iterations)
