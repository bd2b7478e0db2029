"""SSL methods: one module per method plus its ``conf/method/NAME.yaml``."""

from __future__ import annotations

from sslbench.methods.base import NonFiniteLossError, SSLMethod, Views
from sslbench.methods.simclr import SimCLR

#: Method name (as in conf/method/NAME.yaml) → its LightningModule class.
METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
}

__all__ = ["METHODS", "NonFiniteLossError", "SSLMethod", "SimCLR", "Views"]
