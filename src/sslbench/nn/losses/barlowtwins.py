"""The Barlow Twins loss of the whole batch, also when DDP splits the batch over processes.

Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
(https://arxiv.org/abs/2103.03230), Algorithm 1: standardise each embedding dimension over
the batch (mean 0, std 1), form the cross-correlation C = z_aᵀ z_b / N of the two views, and
push it towards the identity: Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij².

Shapes: z_a, z_b (n, D) on each of W processes, N = W·n in the global batch; C (D, D); the
loss is a scalar.

Why not lightly's ``BarlowTwinsLoss``: with ``gather_distributed`` it standardises each
process's embeddings with that process's own batch mean and std, and averages the W
processes' C matrices. Those statistics are not the global batch's (each process's mean
differs from the global mean), so neither is the loss, and it changes with the number of
devices. The Barlow Twins code standardises with the global batch's statistics
(SyncBatchNorm) and divides the summed C by the global batch size. Here every process
gathers the embeddings of all processes first (an autograd-aware gather) and computes the
loss of the global batch, the same value on every process. With one process, or without an
initialised ``torch.distributed``, nothing is gathered and the loss is lightly's, operation
for operation (``tests/nn/test_distributed_losses.py`` checks both).

Gradients: the gather's backward sums over the W processes the gradients that each sends
to this process's embeddings, W · ∂L/∂z_local; DDP then averages parameter gradients over
the W processes, which leaves ∂L/∂θ: the gradient of one process on the whole batch.
Cost: each process builds C from N rather than n samples (N·D² multiply-adds), small
beside the backbone.

Example::

    >>> criterion = BarlowTwinsLoss(lambda_param=5e-3, gather_distributed=True)
    >>> z_a, z_b = torch.randn(8, 16), torch.randn(8, 16)  # two views' embeddings
    >>> loss = criterion(z_a, z_b)  # 0-dim tensor; the global batch's under DDP
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.utils.dist import gather, world_size
from torch import Tensor, nn


def standardise(z: Tensor) -> Tensor:
    """Each column of (N, D) ``z`` to mean 0 and std 1 over the N rows: the biased variance
    plus eps 1e-5, as the Barlow Twins code's affine-free BatchNorm1d and lightly's loss
    (both through batch_norm in training mode, which this calls too)."""
    return F.batch_norm(z, running_mean=None, running_var=None, training=True)


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins' loss, standardised and correlated over the global batch under DDP.

    Args:
        lambda_param: weight λ of the off-diagonal (redundancy reduction) term.
        gather_distributed: under an initialised ``torch.distributed`` with more than one
            process, compute the loss over the embeddings of every process (the global
            batch) instead of this process's alone. Every process must pass the same n.
    """

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False) -> None:
        super().__init__()
        if gather_distributed and not dist.is_available():
            raise ValueError(
                "gather_distributed is true but this torch has no torch.distributed; "
                "set method.gather_distributed=false"
            )
        self.lambda_param = lambda_param
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """The loss of embeddings z_a, z_b (n, D) of two views of the same n images."""
        if z_a.shape != z_b.shape:
            raise ValueError(f"z_a and z_b differ in shape: {tuple(z_a.shape)}, {tuple(z_b.shape)}")
        # world_size() is 1 while torch.distributed is not initialised: nothing to gather.
        if self.gather_distributed and world_size() > 1:
            z_a = torch.cat(gather(z_a))
            z_b = torch.cat(gather(z_b))
        n, dim = z_a.shape
        c = standardise(z_a).T @ standardise(z_b) / n  # (D, D)
        invariance = (torch.diagonal(c) - 1).pow(2).sum()
        off_diagonal = ~torch.eye(dim, dtype=torch.bool, device=c.device)
        redundancy = c[off_diagonal].pow(2).sum()
        return invariance + self.lambda_param * redundancy
