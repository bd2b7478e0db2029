"""MoCo v3's contrastive loss, against the keys of the whole batch, also under DDP.

Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers"
(https://arxiv.org/abs/2104.02057), Algorithm 1 and the official code
(facebookresearch/moco-v3, ``moco/builder.py``): the queries q of one view (the online
network's predictor outputs) and the keys k of the other view (the momentum encoder's
projections) are L2-normalised; each query's logits are its cosine similarities with the
keys of every image in the global batch, divided by the temperature τ; the key of the same
image is the positive, the other keys the negatives (no memory bank). The loss is the
cross-entropy of these logits times 2τ. A method sums it over both directions:
ctr(q1, k2) + ctr(q2, k1).

Shapes: query, key (n, D) on each of W processes, N = W·n in the global batch; logits
(n, N); the loss is a scalar, the mean over this process's n queries.

Why sslbench's own: lightly has no MoCo v3 loss (its NTXentLoss also contrasts each view
with itself and leaves out the 2τ factor). Under an initialised ``torch.distributed`` with
more than one process, ``gather_distributed`` gathers the keys of every process (an
autograd-aware gather, so keys that need a gradient get the whole batch's); the positive of
this process's query i is then global key i + rank·n. The mean over processes of their
losses is the loss of one process on the global batch. With one process, or without an
initialised ``torch.distributed``, nothing is gathered.

Example::

    >>> criterion = MoCoV3Loss(temperature=1.0, gather_distributed=True)
    >>> q1, q2 = torch.randn(8, 256), torch.randn(8, 256)  # predictor outputs, two views
    >>> k1, k2 = torch.randn(8, 256), torch.randn(8, 256)  # momentum encoder outputs
    >>> loss = criterion(q1, k2) + criterion(q2, k1)  # 0-dim tensor
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.utils.dist import gather, rank, world_size
from torch import Tensor, nn


class MoCoV3Loss(nn.Module):
    """MoCo v3's InfoNCE loss of queries against the keys of the global batch, times 2τ.

    Args:
        temperature: τ (1.0 for ResNets, 0.2 for ViTs in the paper's code).
        gather_distributed: under an initialised ``torch.distributed`` with more than one
            process, contrast each query with the keys of every process (the global batch)
            instead of this process's alone. Every process must pass the same n.
    """

    def __init__(self, temperature: float = 1.0, gather_distributed: bool = False) -> None:
        super().__init__()
        if abs(temperature) < 1e-8:
            raise ValueError(f"temperature must not be 0, got {temperature}")
        if gather_distributed and not dist.is_available():
            raise ValueError(
                "gather_distributed is true but this torch has no torch.distributed; "
                "set method.gather_distributed=false"
            )
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        """The loss of queries (n, D) of one view against keys (n, D) of the other view of
        the same n images (row i of each: image i)."""
        if query.shape != key.shape:
            raise ValueError(
                f"query and key differ in shape: {tuple(query.shape)}, {tuple(key.shape)}"
            )
        query = F.normalize(query, dim=1)
        key = F.normalize(key, dim=1)
        n = query.shape[0]
        offset = 0
        # world_size() is 1 while torch.distributed is not initialised: nothing to gather.
        if self.gather_distributed and world_size() > 1:
            key = torch.cat(gather(key))
            offset = rank() * n
        logits = query @ key.T / self.temperature  # (n, N)
        labels = torch.arange(n, device=query.device) + offset
        return F.cross_entropy(logits, labels) * (2 * self.temperature)
