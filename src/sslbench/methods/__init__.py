"""SSL methods: one module per method plus its ``conf/method/NAME.yaml``.

The registry maps a method's name to ``module:Class`` and imports it on first use, so
that importing this package stays light and a new method is one module, one YAML file and
one line here.
"""

from __future__ import annotations

import importlib

from sslbench.methods.base import SSLMethod, Views

#: Method name (as in conf/method/NAME.yaml) → "module:Class" of its LightningModule.
METHODS: dict[str, str] = {
    "simclr": "sslbench.methods.simclr:SimCLR",
    "simsiam": "sslbench.methods.simsiam:SimSiam",
    "byol": "sslbench.methods.byol:BYOL",
    "barlowtwins": "sslbench.methods.barlowtwins:BarlowTwins",
    "vicreg": "sslbench.methods.vicreg:VICReg",
    "swav": "sslbench.methods.swav:SwAV",
    "vicregl": "sslbench.methods.vicregl:VICRegL",
    "supervised": "sslbench.methods.supervised:Supervised",
    "tico": "sslbench.methods.tico:TiCo",
    "fastsiam": "sslbench.methods.fastsiam:FastSiam",
    "simclr_dcl": "sslbench.methods.simclr_dcl:SimCLRDCL",
    "simclr_dclw": "sslbench.methods.simclr_dclw:SimCLRDCLW",
    "swav_queue": "sslbench.methods.swav_queue:SwAVQueue",
    "mocov2": "sslbench.methods.mocov2:MoCoV2",
    "mocov3": "sslbench.methods.mocov3:MoCoV3",
    "dino": "sslbench.methods.dino:DINO",
    "nnclr": "sslbench.methods.nnclr:NNCLR",
    "smog": "sslbench.methods.smog:SMoG",
    "ijepa": "sslbench.methods.ijepa:IJEPA",
    "lejepa": "sslbench.methods.lejepa:LeJEPA",
    "mae": "sslbench.methods.mae:MAE",
    "simmim": "sslbench.methods.simmim:SimMIM",
    "ibot": "sslbench.methods.ibot:IBOT",
    "msn": "sslbench.methods.msn:MSN",
}


def method_class(name: str) -> type[SSLMethod]:
    """The LightningModule class of method ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; valid: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["METHODS", "SSLMethod", "Views", "method_class"]
