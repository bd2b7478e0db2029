"""SimCLR with the weighted decoupled contrastive loss (DCLW): Yeh, Hong, Hsu, Liu, Chen &
LeCun 2022, "Decoupled Contrastive Learning" (ECCV 2022, https://arxiv.org/abs/2110.06848).
Not sslbench's DCL pretext task (``pretext=dcl``, region confusion), another paper.

As :mod:`sslbench.methods.simclr_dcl`, with each positive pair's term weighted by a negative
von Mises-Fisher weight, w_i = 2 − N · softmax_i(sim(z_i, z'_i) / σ): pairs that are already
close weigh less, pairs far apart more (the weights average 1 over the batch).
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → embeddings 2 × (N, output_dim).

Under DDP (``gather_distributed``) the negatives come from every process, as for DCL, but
lightly's weights are a softmax over each process's own N rows, not over the global batch:
the loss on several processes is not exactly the loss of the global batch on one.
"""

from __future__ import annotations

from typing import Any

from lightly.loss import DCLWLoss

from sslbench.methods.simclr import SimCLR


class SimCLRDCLW(SimCLR):
    """SimCLR with lightly's projection head and DCLWLoss.

    Method keys (method/simclr_dclw.yaml): temperature, sigma, hidden_dim, output_dim,
    num_layers, gather_distributed, joint_forward.
    """

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.criterion = DCLWLoss(
            temperature=method["temperature"],
            sigma=method["sigma"],
            gather_distributed=method["gather_distributed"],
        )
