"""sslbench's own losses: where a lightly loss does not compute what its method's paper asks
for, e.g. under DDP. Kept out of :mod:`sslbench.methods`, whose import pulls in Lightning."""

from __future__ import annotations

from sslbench.nn.losses.barlowtwins import BarlowTwinsLoss
from sslbench.nn.losses.mocov3 import MoCoV3Loss

__all__ = ["BarlowTwinsLoss", "MoCoV3Loss"]
