"""SwAV with a queue: Caron, Misra, Mairal, Goyal, Bojanowski & Joulin 2020, "Unsupervised
Learning of Visual Features by Contrasting Cluster Assignments" (NeurIPS 2020,
https://arxiv.org/abs/2006.09882), section 3 / appendix: with small batches, the Sinkhorn
codes are computed over the batch and a queue of past projections.

The network, views and loss are :mod:`sslbench.methods.swav`'s; conf/method/swav_queue.yaml
turns the queue on (lightly's SwaVQueue benchmark: 384 projections per global view from
epoch 15). Shapes as SwAV's, plus each queue (queue_length, output_dim).
"""

from __future__ import annotations

from sslbench.methods.swav import SwAV


class SwAVQueue(SwAV):
    """SwAV whose YAML turns the queue on; the method keys are SwAV's."""

    # The learning test's 2 epochs end long before epoch 15: its queue starts in the second
    # epoch there, so the test trains what sets this method apart from swav.
    learning_run_overrides = ("epochs=2", "method.queue_start_epoch=1")
