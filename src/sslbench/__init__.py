"""sslbench: pretrain, evaluate and compare self-supervised vision models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load_backbone(path: str | Path, device: str = "cpu") -> nn.Module:
    """The backbone that ``sslbench export`` wrote to ``path`` (a .safetensors file, its
    JSON beside it), rebuilt and loaded strictly, in eval mode (see sslbench.tools.export)."""
    # Imported here: `import sslbench` stays free of torch (the command line validates its
    # arguments before torch is imported).
    from sslbench.tools.export import load_backbone as load

    return load(path, device)
