"""MoCo v2: Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum Contrastive
Learning" (https://arxiv.org/abs/2003.04297), on MoCo (He et al. 2019,
https://arxiv.org/abs/1911.05722).

A query network (backbone + MLP head) is trained to pick out, among a queue of keys of past
batches, the key that a momentum network (an EMA copy of backbone and head, updated once per
step before the forward pass: :mod:`sslbench.methods.ema`) gives another view of the same
image. The keys get no gradient; the momentum network sees its batch shuffled (MoCo's
shuffling BN, which matters only when batch norm's statistics come from several processes'
shards) and its outputs are put back in order. lightly's NTXentLoss with a memory bank is
the InfoNCE loss against the bank and enqueues each call's keys.

Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → queries q and keys k 2 × (N, output_dim);
bank (memory_bank_size, output_dim). Loss 0.5 · (L(q0, k1) + L(q1, k0)) (lightly's benchmark,
2N keys enqueued per step), or with ``method.symmetric=false`` L(q0, k1) (the paper, N keys).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle
from lightly.utils.dist import world_size
from torch import Tensor

from sslbench.methods.base import Views
from sslbench.methods.ema import EMATargetMethod


class MoCoV2(EMATargetMethod):
    """MoCo v2 with lightly's MoCoProjectionHead, EMA update, batch shuffle and NTXentLoss
    with a memory bank.

    ``self.backbone`` is the query backbone (the one evaluated); ``backbone_target`` and
    ``projection_head_target`` form the momentum (key) network, with ``requires_grad`` False.

    Method keys (method/mocov2.yaml): hidden_dim, output_dim, temperature, memory_bank_size,
    gather_distributed, symmetric, momentum, momentum_end.
    """

    lightly_transform = "pipeline"
    bank_keys = ("memory_bank_size",)
    # A bank of 128 fits the tiny runs' 128-256 images (a bank must not exceed the set).
    small_overrides = (
        "method.hidden_dim=256", "method.output_dim=64", "method.memory_bank_size=128",
    )  # fmt: skip
    # The learning runs train on 4,000 images: half of them as keys in the bank.
    learning_run_overrides = ("epochs=3", "method.memory_bank_size=2048")

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        output_dim = int(method["output_dim"])
        self.projection_head = MoCoProjectionHead(
            input_dim=self.feature_dim, hidden_dim=method["hidden_dim"], output_dim=output_dim
        )
        self.backbone_target = self.add_target("backbone")
        self.projection_head_target = self.add_target("projection_head")
        bank_size = int(method["memory_bank_size"])
        # gather_distributed also reaches the bank: under DDP it enqueues the global batch.
        self.criterion = NTXentLoss(
            temperature=method["temperature"],
            memory_bank_size=(bank_size, output_dim) if bank_size > 0 else 0,
            gather_distributed=method["gather_distributed"],
        )
        self.symmetric = bool(method["symmetric"])

    def queries(self, x: Tensor) -> Tensor:
        """Query-network outputs (N, output_dim) of views x."""
        return self.projection_head(self.features(x))

    def keys(self, x: Tensor) -> Tensor:
        """Momentum-network keys (N, output_dim) of views x, in x's order. The batch is
        shuffled before the network and unshuffled after it: over every process's shard
        under DDP, so that batch norm cannot find a query's key by its shard's statistics."""
        if world_size() == 1:
            # One process: batch norm's statistics do not depend on the order, so the
            # shuffle would change nothing but the order of its sums (and draw from the
            # global random stream, which a resumed run does not restore).
            return self.projection_head_target(self.backbone_target(x))
        shuffled, order = batch_shuffle(x, distributed=True)
        k = self.projection_head_target(self.backbone_target(shuffled))
        return batch_unshuffle(k, order, distributed=True)

    def training_loss(self, views: Views) -> Tensor:
        x0, x1 = views.global_views
        if self.symmetric:  # lightly's benchmark: each view is once the query, once the key
            q0, q1 = self.forward_views(self.queries, [x0, x1])
            with torch.no_grad():  # keys get no gradient: no graph to keep
                k0, k1 = self.forward_views(self.keys, [x0, x1])
            self.monitor_embeddings(q0)
            return self.float32_loss(self._symmetric_loss, q0, q1, k0, k1)
        # The paper: view 0 gives the queries, view 1 the keys.
        (q0,) = self.forward_views(self.queries, [x0])
        with torch.no_grad():
            (k1,) = self.forward_views(self.keys, [x1])
        self.monitor_embeddings(q0)
        return self.float32_loss(self.criterion, q0, k1)

    def _symmetric_loss(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
        # Each call scores its queries against the bank as it is, then enqueues its keys:
        # k1 first, then k0 (lightly's benchmark order).
        return 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))
