"""Memory banks: what a checkpoint must hold of them, and how large they may be.

lightly's :class:`~lightly.models.modules.memory_bank.MemoryBankModule` (MoCo's negatives,
NNCLR's neighbours, SwAV's queue) keeps its entries (``bank``) and its write position
(``bank_ptr``) in non-persistent buffers: a state_dict leaves them out, so a Lightning
checkpoint would too, and a resumed run would go on with a fresh random bank. The methods
save them beside the state_dict instead (:meth:`SSLMethod.on_save_checkpoint`).

A bank holds embeddings of past batches, to serve as negatives or neighbours of other
images. One larger than the training set holds the same image more than once (and its
random first entries never leave it within an epoch): the run refuses it and names a size
that fits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightly.models.modules.memory_bank import MemoryBankModule
from omegaconf import DictConfig
from torch import Tensor, nn

from sslbench.errors import ConfigError


def bank_state(model: nn.Module) -> dict[str, Tensor]:
    """Every memory bank's entries and write position in ``model``, by qualified name
    (``criterion.memory_bank.bank``, ``...bank_ptr``), detached copies."""
    state: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        # A bank of size 0 (NTXentLoss's when it has none) holds nothing; its pointer is
        # uninitialised memory.
        if isinstance(module, MemoryBankModule) and module.size[0] > 0:
            prefix = f"{name}." if name else ""
            state[f"{prefix}bank"] = module.bank.detach().clone()
            state[f"{prefix}bank_ptr"] = module.bank_ptr.detach().clone()
    return state


def load_bank_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Put the banks of :func:`bank_state` back into ``model`` (in place, on its devices).
    A bank of another shape is an error: the checkpoint is of another configuration."""
    for name, module in model.named_modules():
        if not isinstance(module, MemoryBankModule) or module.size[0] == 0:
            continue
        prefix = f"{name}." if name else ""
        for buffer in ("bank", "bank_ptr"):
            key = f"{prefix}{buffer}"
            if key not in state:
                continue
            saved, own = state[key], getattr(module, buffer)
            if saved.shape != own.shape:
                raise ValueError(
                    f"checkpoint's {key} has shape {tuple(saved.shape)}, the method's "
                    f"{tuple(own.shape)}: it was saved with another bank size"
                )
            with torch.no_grad():
                own.copy_(saved.to(own.device, own.dtype))


def fitting_bank_size(train_images: int, batch_size: int) -> int:
    """The largest bank that fits a training set: a multiple of the global batch (lightly's
    ring buffer drops a batch's overflow at the wrap) no larger than the set."""
    if batch_size >= train_images:
        return train_images
    return (train_images // batch_size) * batch_size


def check_bank_sizes(cfg: DictConfig, keys: tuple[str, ...], train_images: int) -> None:
    """Refuse a ``method.KEY`` bank size (for KEY in ``keys``) larger than the training set,
    naming one that fits."""
    for key in keys:
        size = int(cfg.method.get(key) or 0)
        if size > train_images:
            fit = fitting_bank_size(train_images, int(cfg.batch_size))
            raise ConfigError(
                f"method.{key}={size} is larger than the training set ({train_images} "
                f"images): a bank of past embeddings must not repeat images; use "
                f"method.{key}={fit} or less"
            )
