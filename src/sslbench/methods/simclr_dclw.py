"""SimCLR with the weighted decoupled contrastive loss (DCLW): Yeh, Hong, Hsu, Liu, Chen &
LeCun 2022, "Decoupled Contrastive Learning" (ECCV 2022, https://arxiv.org/abs/2110.06848).
Not sslbench's DCL pretext task (``pretext=dcl``, region confusion), another paper.

As :mod:`sslbench.methods.simclr_dcl`, with each positive pair's term weighted by a negative
von Mises-Fisher weight, w_i = 2 − N · softmax_i(sim(z_i, z'_i) / σ): pairs that are already
close weigh less, pairs far apart more (the weights average 1 over the batch).
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → embeddings 2 × (N, output_dim).

Under DDP (``gather_distributed``) the negatives come from every process, as for DCL, and
so do the weights: lightly's ``DCLWLoss`` would take the softmax over each process's own rows
(and N as the local batch), which makes the loss on several processes differ from the global
batch's on one; :func:`global_mises_fisher_weights` takes it over the gathered batch and
keeps this process's rows.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightly.loss import DCLLoss
from lightly.loss.dcl_loss import negative_mises_fisher_weights
from lightly.utils import dist
from torch import Tensor

from sslbench.methods.simclr import SimCLR


def global_mises_fisher_weights(out0: Tensor, out1: Tensor, sigma: float) -> Tensor:
    """lightly's negative von Mises-Fisher weights of this process's N pairs, normalised over
    the global batch (every process holds N rows, as DDP's sampler gives them).

    out0, out1: (N, D) embeddings of the two views → (N,) weights; on one process they are
    lightly's ``negative_mises_fisher_weights(out0, out1, sigma)``.
    """
    if dist.world_size() == 1:
        return negative_mises_fisher_weights(out0, out1, sigma)
    all0 = torch.cat(dist.gather(out0.detach()), 0)
    all1 = torch.cat(dist.gather(out1.detach()), 0)
    start = dist.rank() * out0.shape[0]
    return negative_mises_fisher_weights(all0, all1, sigma)[start : start + out0.shape[0]]


class SimCLRDCLW(SimCLR):
    """SimCLR with lightly's projection head and DCLWLoss (lightly's ``DCLLoss`` with its
    weights, normalised over the global batch under DDP).

    Method keys (method/simclr_dclw.yaml): temperature, sigma, hidden_dim, output_dim,
    num_layers, gather_distributed, joint_forward.
    """

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        gather = method["gather_distributed"]
        weights = global_mises_fisher_weights if gather else negative_mises_fisher_weights
        self.criterion = DCLLoss(
            temperature=method["temperature"],
            weight_fn=partial(weights, sigma=method["sigma"]),
            gather_distributed=gather,
        )
