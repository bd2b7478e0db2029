"""Lightning's and torch's lines that mean nothing in an sslbench run, kept off the screen.

A run's own output says what it trains and what it scored; Lightning adds lines written for
its own users (who pick accelerators, loggers and strategies by hand), which a new user of
sslbench reads as problems. :func:`quiet_lightning` hides exactly these, each matched by its
message (a regular expression on the start of the line) on the logger or warning category
that emits it, so any other line of the same logger, and every other warning, still shows.

Logged lines (a :class:`logging.Filter` on the logger that emits them; Lightning's
``rank_zero_info`` logs through ``pytorch_lightning.utilities.rank_zero``, or
``lightning_fabric.utilities.rank_zero`` when only Fabric is loaded):

- ``GPU available: False, used: False`` and ``TPU available: False, using: 0 TPU cores``
  (pytorch_lightning.trainer.setup): the device is the run's ``device=``, chosen before;
  a GPU that is there but not used still shows (Lightning warns about it besides).
- ``💡 Tip: For seamless cloud logging ... litlogger ...``
  (pytorch_lightning.trainer.connectors.logger_connector): an advert; sslbench writes
  metrics.csv itself.
- ```Trainer.fit` stopped: `max_epochs=N` reached.`` (and ``max_steps``, as in ``sslbench
  bench``) (pytorch_lightning.loops.fit_loop): the run ending as planned; a stop with no
  training batches still shows.
- ``Loading `train_dataloader` to estimate number of stepping batches.``
  (pytorch_lightning.trainer.trainer): internal bookkeeping for the learning-rate schedule.
- ``Initializing distributed: GLOBAL_RANK: r, MEMBER: m/n``
  (lightning_fabric.utilities.distributed, on every rank) and the ``-----
  distributed_backend=gloo ... Starting with n processes -----`` banner (same module,
  through rank_zero_info): the ranks starting as ``devices=`` asked.

Python warnings (``warnings.filterwarnings`` on the exact message and category):

- ```isinstance(treespec, LeafSpec)` is deprecated ...`` (FutureWarning from torch, raised
  at Lightning's own use in pytorch_lightning.utilities._pytree): Lightning's to fix, not
  the user's; only that module's use is hidden.
- ``The number of training batches (n) is smaller than the logging interval ...``
  (PossibleUserWarning, pytorch_lightning.loops.fit_loop): a short run logs its epoch means
  to metrics.csv anyway; nothing to change.
- ``It is recommended to use `self.log('name', ..., sync_dist=True)` when logging on epoch
  level in distributed setting ...`` (PossibleUserWarning,
  pytorch_lightning.trainer.connectors.logger_connector.result): the epoch-level values in
  metrics.csv (loss, collapse monitor, epoch time) are rank 0's own, by design: monitoring,
  not results (the results are the probe's, computed by rank 0 alone).

A C++ warning: ``find_unused_parameters=True was specified in DDP constructor, but did not
find any unused parameters`` (torch's reducer.cpp, once per rank). sslbench asks DDP to look
for unused parameters because some methods leave some without a gradient in a step, and the
others then get this advice, which is wrong for sslbench. Torch prints it from its autograd
callback through C++ logging, not Python's ``warnings`` (checked: no Python filter, not even
``"always"``, sees it), and reads that logging's level (``TORCH_CPP_LOG_LEVEL``) once, when
torch is imported. So :func:`rank_environment` sets ``TORCH_CPP_LOG_LEVEL=ERROR`` for the
ranks that ``sslbench pretrain devices=N`` starts through torchrun: in them, C++ messages
below ERROR that torch prints outside Python are hidden; errors still show, and C++
warnings raised while Python calls torch (most of them) still reach Python as warnings.
Ranks started by your own launcher (srun, torchrun) keep whatever level you give them.

``SSLBENCH_VERBOSE=1`` (or any value but empty/``0``) shows everything.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable

from lightning_fabric.utilities.warnings import PossibleUserWarning

__all__ = ["VERBOSE_ENV", "quiet_lightning", "rank_environment", "verbose"]

#: Set to 1 to see every line Lightning and torch print.
VERBOSE_ENV = "SSLBENCH_VERBOSE"

#: The loggers Lightning's ``rank_zero_info`` writes through (lightning_utilities' module
#: logger, which Lightning replaces with its own, Fabric's or PyTorch Lightning's by import
#: order).
_RANK_ZERO = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")

#: (logger names, regular expression matched at the start of the message) per silenced line.
LOGGED_LINES: tuple[tuple[tuple[str, ...], str], ...] = (
    # a GPU present but unused (available True, used False) is not matched
    (_RANK_ZERO, r"GPU available: (False, used: False|True( \(\w+\))?, used: True)$"),
    (_RANK_ZERO, r"TPU available: False, using: 0 TPU cores$"),
    (
        _RANK_ZERO,
        r"💡 Tip: For seamless cloud logging and experiment tracking, try installing "
        r"\[litlogger\]",
    ),
    (_RANK_ZERO, r"`Trainer\.fit` stopped: `max_(epochs|steps)=\d+` reached\.$"),
    (_RANK_ZERO, r"Loading `train_dataloader` to estimate number of stepping batches\.$"),
    (
        _RANK_ZERO,
        r"-+\ndistributed_backend=\w+\nAll distributed processes registered\. "
        r"Starting with \d+ processes\n-+\n*$",
    ),
    (
        ("lightning_fabric.utilities.distributed",),
        r"Initializing distributed: GLOBAL_RANK: \d+, MEMBER: \d+/\d+$",
    ),
)

#: (category, message regular expression, module regular expression or "") per silenced
#: Python warning; warnings.filterwarnings matches the message from its start.
WARNED_LINES: tuple[tuple[type[Warning], str, str], ...] = (
    (
        FutureWarning,
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"pytorch_lightning\.utilities\._pytree$",
    ),
    (
        # lightly's DINOProjectionHead (lightly 1.6) builds its last layer with it
        FutureWarning,
        r"`torch\.nn\.utils\.weight_norm` is deprecated in favor of",
        "",
    ),
    (
        PossibleUserWarning,
        r"The number of training batches \(\d+\) is smaller than the logging interval "
        r"Trainer\(log_every_n_steps=\d+\)",
        "",
    ),
    (
        PossibleUserWarning,
        r"It is recommended to use `self\.log\('[^']*', \.\.\., sync_dist=True\)` when "
        r"logging on epoch level in distributed setting",
        "",
    ),
)

#: The level of torch's C++ logging in the ranks sslbench starts (see the module's text).
RANK_CPP_LOG_LEVEL = "ERROR"


def verbose() -> bool:
    """Whether ``SSLBENCH_VERBOSE`` asks to see every line."""
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


class _DropLines(logging.Filter):
    """Drops the records whose message matches one of ``patterns`` (from its start)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def _filters() -> dict[str, _DropLines]:
    patterns: dict[str, list[str]] = {}
    for names, pattern in LOGGED_LINES:
        for name in names:
            patterns.setdefault(name, []).append(pattern)
    return {name: _DropLines(p) for name, p in patterns.items()}


#: One filter per logger, built once: attaching the same object twice is a no-op.
_LOGGER_FILTERS = _filters()


def quiet_lightning() -> None:
    """Hide the lines the module's text lists, in this process (idempotent; call it before
    the Trainer is built: Lightning logs some lines while building it). Nothing is hidden
    under ``SSLBENCH_VERBOSE=1``."""
    if verbose():
        for name, drop in _LOGGER_FILTERS.items():
            logging.getLogger(name).removeFilter(drop)  # a no-op when not attached
        return
    for name, drop in _LOGGER_FILTERS.items():
        logging.getLogger(name).addFilter(drop)  # logging keeps one copy of each filter
    for category, message, module in WARNED_LINES:
        # filterwarnings replaces an identical earlier entry: calling again adds nothing
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def rank_environment() -> dict[str, str]:
    """Environment entries for the ranks that ``sslbench pretrain devices=N`` starts:
    ``TORCH_CPP_LOG_LEVEL=ERROR`` (the module's text says why), unless the user set a level
    or ``SSLBENCH_VERBOSE`` is on."""
    if verbose() or "TORCH_CPP_LOG_LEVEL" in os.environ:
        return {}
    return {"TORCH_CPP_LOG_LEVEL": RANK_CPP_LOG_LEVEL}
