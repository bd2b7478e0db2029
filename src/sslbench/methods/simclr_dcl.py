"""SimCLR with the decoupled contrastive loss: Yeh, Hong, Hsu, Liu, Chen & LeCun 2022,
"Decoupled Contrastive Learning" (ECCV 2022, https://arxiv.org/abs/2110.06848). Not
sslbench's DCL pretext task (``pretext=dcl``, region confusion), another paper.

SimCLR's network and views; the loss is NT-Xent without the positive pair in the
denominator: for each embedding, −sim(positive)/τ + log Σ_negatives exp(sim/τ), the
negatives being the other 2N − 2 embeddings. Removing the positive from the denominator
removes the negative-positive coupling that makes NT-Xent's gradients shrink when the
positive is already close or the batch is small.
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → embeddings 2 × (N, output_dim).

Under DDP (``gather_distributed``) lightly's DCLLoss takes the negatives from every
process (gradients flow back through the gather) and each process averages over its own
rows: with DDP's gradient average, the step of the global batch.
"""

from __future__ import annotations

from typing import Any

from lightly.loss import DCLLoss

from sslbench.methods.simclr import SimCLR


class SimCLRDCL(SimCLR):
    """SimCLR with lightly's projection head and DCLLoss.

    Method keys (method/simclr_dcl.yaml): temperature, hidden_dim, output_dim, num_layers,
    gather_distributed, joint_forward.
    """

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.criterion = DCLLoss(
            temperature=method["temperature"], gather_distributed=method["gather_distributed"]
        )
