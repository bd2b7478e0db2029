"""A run's ``random_init`` block: its backbone's scores untrained, checked as hostile input.

``sslbench demo`` and ``sslbench eval run_dir=DIR random_init=true`` evaluate the run's
backbone freshly initialised (with the run's seed) by the run's own probes and write the
result under ``random_init`` in its results.json: the same fields as the run's own scores
(``linear_top1``, ``knn_top1``, ``knn_top1_k20``, ...). The report shows them as the
random-init row of the run's section (bounds.py). Here only the numbers it shows are
read, each checked as the run's own are (a finite number in [0, 1]); a block that is not a
mapping, or holds a bad number, makes the run unreadable (RunFolderError), as any other
bad field does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sslbench.errors import RunFolderError, one_line
from sslbench.eval.fields import KNN_FIELD

#: The block's scores the report can show (Run attribute names), besides kNN's variants.
SCORES = (
    "linear_top1", "linear_top5", "knn_top1", "sgd_linear_top1", "sgd_linear_top5",
    "finetune_top1", "linear_top1_1pct", "linear_top1_10pct",
)  # fmt: skip
MAX_KNN_FIELDS = 16
_HEX = re.compile(r"[0-9a-fA-F]{1,128}")


@dataclass(frozen=True)
class RandomInit:
    """The checked scores of one ``random_init`` block."""

    scores: dict[str, float]  # Run attribute (linear_top1, knn_top1_k20, ...) -> accuracy
    test_sha256: str | None  # the test images it was scored on, when recorded
    test_count: int | None


def _accuracy(block: dict[str, Any], key: str) -> float | None:
    value = block.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = one_line(repr(value), 60)
        raise RunFolderError(f"results.json: random_init.{key} is not a number: {shown}")
    number = float(value) if abs(value) < 1e300 else math.inf
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        shown = one_line(repr(value), 40)
        raise RunFolderError(f"results.json: random_init.{key}={shown} is outside [0, 1]")
    return number


def _subset(value: Any) -> tuple[str | None, int | None]:
    if not isinstance(value, dict):
        return None, None
    sha, count = value.get("sha256"), value.get("count")
    if not isinstance(sha, str) or not _HEX.fullmatch(sha):
        raise RunFolderError("results.json: random_init.test_subset.sha256 is not a digest")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        count = None
    return sha.lower(), count


def read_random_init(value: Any) -> RandomInit | None:
    """The checked ``random_init`` block, or None without one (or one without scores)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RunFolderError("results.json: random_init is not a mapping")
    knn = sorted(k for k in value if isinstance(k, str) and KNN_FIELD.fullmatch(k))
    names = [*SCORES, *knn[:MAX_KNN_FIELDS]]
    scores = {name: score for name in names if (score := _accuracy(value, name)) is not None}
    if not scores:
        return None
    sha, count = _subset(value.get("test_subset"))
    return RandomInit(scores, sha, count)
