"""The names of the evaluation fields in results.json that depend on a protocol's
settings: kNN top-1 at (k, T). Pure Python: the report and the console read them.
"""

from __future__ import annotations

import re

#: kNN's default setting (Wu et al. 2018; lightly's benchmarks): its top-1 is ``knn_top1``.
KNN_DEFAULT = {"k": 200, "temperature": 0.1}

#: The field of kNN top-1 at any other setting: ``knn_top1_k20``, ``knn_top1_k200_t0.07``
#: (:func:`knn_field` writes it; the report, the trackers and the console read it).
KNN_FIELD = re.compile(r"knn_top1_k(\d{1,6})(?:_t(\d{1,6}(?:\.\d{1,12})?(?:e-?\d{1,3})?))?")


def knn_field(k: int, temperature: float) -> str:
    """The results.json field of kNN top-1 at (k, T): ``knn_top1`` at the default setting,
    else ``knn_top1_k20`` or ``knn_top1_k200_t0.07``: each setting keeps its own number."""
    if k == KNN_DEFAULT["k"] and temperature == KNN_DEFAULT["temperature"]:
        return "knn_top1"
    suffix = "" if temperature == KNN_DEFAULT["temperature"] else f"_t{temperature:g}"
    return f"knn_top1_k{k}{suffix}"
