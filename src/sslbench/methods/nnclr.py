"""NNCLR: Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations" (https://arxiv.org/abs/2104.14548).

SimCLR's contrastive loss with each view's positive replaced by its nearest neighbour
(cosine similarity) in a support set, a queue of projections of past batches: the positives
are other images of the data set, which brings semantic variation no augmentation gives.
The neighbour is a constant (no gradient); a predictor on the other view learns to match
it, against the other neighbours of the batch as negatives (NT-Xent).

Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → projections z 2 × (N, output_dim)
→ predictions p 2 × (N, output_dim); nearest neighbours nn 2 × (N, output_dim) from the
support set (memory_bank_size, output_dim). Loss 0.5 · (NT-Xent(nn0, p1) + NT-Xent(nn1, p0)).
Both neighbours are looked up in the support set as it was before the step; then z1 (only
z1, lightly's NNCLR example and benchmark) enters it, oldest entries first out.

Under DDP: NT-Xent gathers the neighbours and predictions of every process (its negatives
are the global batch's, ``gather_distributed``), and the support set is updated with the
global batch's z1 (lightly's ``gather_distributed`` attribute of NNMemoryBankModule), so it
holds the same entries on every process and does not depend on the number of processes.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import NNCLRPredictionHead, NNCLRProjectionHead
from lightly.models.modules.nn_memory_bank import NNMemoryBankModule
from torch import Tensor

from sslbench.methods.base import SSLMethod, Views


class NNCLR(SSLMethod):
    """NNCLR with lightly's heads, NNMemoryBankModule (the support set) and NTXentLoss.

    Method keys (method/nnclr.yaml): hidden_dim, output_dim, predictor_hidden_dim,
    temperature, memory_bank_size, gather_distributed, joint_forward.
    """

    lightly_transform = "pipeline"
    small_overrides = (
        "method.hidden_dim=64", "method.output_dim=32", "method.predictor_hidden_dim=64",
        "method.memory_bank_size=128",
    )  # fmt: skip
    # The learning test trains on 4,000 images: a bank of 4096 would not fit; 2048 is 16
    # batches of its 128 (tests/methods/test_methods_learn.py).
    learning_run_overrides = ("epochs=2", "method.memory_bank_size=2048")
    bank_keys = ("memory_bank_size",)

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        output_dim = int(method["output_dim"])
        self.projection_head = NNCLRProjectionHead(
            input_dim=self.feature_dim, hidden_dim=method["hidden_dim"], output_dim=output_dim
        )
        self.prediction_head = NNCLRPredictionHead(
            input_dim=output_dim, hidden_dim=method["predictor_hidden_dim"], output_dim=output_dim
        )
        gather = bool(method["gather_distributed"])
        self.memory_bank = NNMemoryBankModule(size=(int(method["memory_bank_size"]), output_dim))
        # Its constructor takes no such argument in lightly 1.6.0; the attribute is read at
        # every update (MemoryBankModule._dequeue_and_enqueue).
        self.memory_bank.gather_distributed = gather
        self.criterion = NTXentLoss(temperature=method["temperature"], gather_distributed=gather)

    def training_loss(self, views: Views) -> Tensor:
        z0, z1 = self.project_global_views(self.projection_head, views)
        p0, p1 = self.forward_views(self.prediction_head, [z0, z1])
        # In float32: the bank is float32, and its similarities pick the neighbours.
        with torch.autocast(device_type=self.device.type, enabled=False):
            nn0 = self.memory_bank(z0.detach().float(), update=False)
            nn1 = self.memory_bank(z1.detach().float(), update=True)
        return 0.5 * (
            self.float32_loss(self.criterion, nn0, p1) + self.float32_loss(self.criterion, nn1, p0)
        )
