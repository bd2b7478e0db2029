"""Per-sample randomness over a batch, and applying an op to the samples it fires on.

Every op gives each sample of a batch its own random parameters, drawn as tensors from a
``torch.Generator`` on the batch's device; nothing loops over samples or reads values back to
the host (no ``.item()``), so the same code runs unchanged, and without syncs, on CPU and CUDA.
These are the helpers the ops draw and select with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def per_sample(v: Tensor) -> Tensor:
    """View a per-sample vector (N,) as (N, 1, 1, 1) so that it broadcasts over images."""
    return v.to(torch.float32).view(-1, 1, 1, 1)


def uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(N,) float32 samples of U[lo, hi]."""
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def coin(n: int, p: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(N, 1, 1, 1) bool mask, True with probability p, ready for ``torch.where``."""
    return (torch.rand(n, generator=gen, device=device) < p).view(-1, 1, 1, 1)


#: Whether ops may compute only the samples an op applies to. This needs the number of such
#: samples on the host: free on the CPU, a stall of the stream on CUDA, so there (and with
#: False, for tests) every sample is computed and the result selected with torch.where.
SUBSET_ON_CPU = True


def computes_subsets(x: Tensor) -> bool:
    """Whether ``for_samples`` computes only the selected samples of ``x`` (on the CPU)."""
    return SUBSET_ON_CPU and x.device.type == "cpu"


def for_samples(
    mask: Tensor,
    x: Tensor,
    fn: Callable[[Tensor, Tensor | slice], Tensor],
    *,
    inplace: bool = False,
) -> Tensor:
    """``x`` with ``fn`` applied to the samples where mask[N] (bool) is true.

    ``fn(x_part, sel)`` gets the selected samples and ``sel``, which indexes per-sample
    parameters (an index tensor, or ``slice(None)`` when it gets the whole batch). On the CPU
    only the selected samples are computed (written into ``x`` itself with ``inplace``, for a
    caller that owns it); elsewhere all are, without a host sync. Both give the same result.
    """
    if computes_subsets(x):
        index = mask.view(-1).nonzero().view(-1)
        if index.numel() == 0:
            return x
        if index.numel() == x.shape[0]:
            return fn(x, slice(None))
        out = x if inplace else x.clone()
        out[index] = fn(x[index], index)
        return out
    return torch.where(mask.view(-1, 1, 1, 1), fn(x, slice(None)), x)
