"""The bounds of a comparison table: the supervised row and the random-init row.

Every accuracy table ends with reference rows below its SSL methods, never marked best:
- **supervised (labels)**: runs of ``method=supervised``, the same backbone and pipeline
  trained with the labels, scored like every run (the upper bound). They are runs, so
  their rows are built as any method's; model.RowKey.order puts them last.
- **random init**: the backbone untrained. It has no runs of its own: a run's results.json
  may carry a ``random_init`` block (``sslbench demo``; ``sslbench eval run_dir=DIR
  random_init=true``), scored by that run's probes. It depends on the dataset, the
  backbone, the image size and the test images, not on the method, pipeline, epochs or
  batch, so a section takes the block of any run sharing those four (each run counted
  once), shows the first (by folder name) in every pipeline column (the evaluation view
  does not depend on the pipeline), and says in a footnote how many runs held one and
  whether they agree within the probe's noise.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sslbench.report.collect import Run
from sslbench.report.model import Cell, RandomInitRow, SectionKey, fmt_accuracy
from sslbench.report.random_init import RandomInit
from sslbench.report.scoring import run_identity

#: (dataset, backbone, image size, test images' SHA-256) -> (run name, its block), by name.
RandomInits = dict[tuple[str, str, int, str], list[tuple[str, RandomInit]]]
#: Two blocks disagree when they differ by more than this many standard errors of a
#: difference of two accuracies on the test images (binomial); without a count, by more
#: than NOISE_UNKNOWN.
NOISE_SE = 2.0
NOISE_UNKNOWN = 0.02


def gather_random_inits(runs: Sequence[Run]) -> RandomInits:
    """Every run's ``random_init`` block under the key a section matches it by; of the
    folders holding one run (copies), only the first by name counts."""
    found: RandomInits = defaultdict(list)
    seen: set[tuple[object, ...]] = set()
    for run in sorted(runs, key=lambda r: r.name):
        block = run.random_init
        if block is None:
            continue
        identity = run_identity(run)
        if identity is not None:
            if identity in seen:
                continue
            seen.add(identity)
        sha = block.test_sha256 or ("" if run.test_subset is None else run.test_subset.sha256)
        size = -1 if run.image_size is None else run.image_size
        found[(run.dataset, run.backbone or "", size, sha)].append((run.name, block))
    return dict(found)


def _noise(value: float, count: int | None) -> float:
    if not count:
        return NOISE_UNKNOWN
    return NOISE_SE * math.sqrt(2 * value * (1 - value) / count)


def random_init_row(key: SectionKey, blocks: RandomInits) -> RandomInitRow | None:
    """The section's random-init row: the first matching block, and a note on the others."""
    found = blocks.get((key.dataset, key.backbone, key.image_size, key.test_sha256), [])
    if not found:
        return None
    source, first = found[0]
    note = (
        "random init: the backbone untrained (initialised with the run's seed), scored by the "
        f"run's probes; the random_init block of {source}'s results.json, shown in every "
        "pipeline column (the evaluation view does not depend on the pipeline)"
    )
    if len(found) > 1:
        count = key.test_count if key.test_count > 0 else first.test_count
        apart = []
        for name in first.scores:
            values = [b.scores[name] for _, b in found if name in b.scores]
            if max(values) - min(values) > _noise(sum(values) / len(values), count):
                apart.append(f"{name} {min(values):.3f} to {max(values):.3f}")
        note += f"; {len(found)} runs hold one, "
        if apart:
            note += f"differing by more than the probe's noise: {', '.join(apart)}"
        else:
            note += "agreeing within the probe's noise"
    return RandomInitRow(dict(first.scores), source, len(found), note)


def random_init_cell(row: RandomInitRow, attribute: str) -> Cell:
    """The random-init row's cell of one metric (a Run attribute); never marked best."""
    value = row.scores.get(attribute)
    if value is None:
        return Cell(rankable=False)
    return Cell(text=fmt_accuracy(value), sort_value=value, rankable=False)


def random_init_record(
    base: dict[str, Any], row: RandomInitRow, attributes: dict[str, str]
) -> dict[str, Any]:
    """The random-init row's long-form record: ``base`` (a section's fields, every other
    field None), its scores under the fields ``attributes`` maps them to (Run attribute ->
    record field, e.g. knn_top1 -> knn_top1_mean)."""
    record = dict(base)
    record.update(
        {
            "method": "random_init",
            "bound": "random_init",
            "n_runs": row.n_blocks,
            "status": "completed",
            "run_folders": [row.source],
            "caveats": [row.note],
        }
    )
    for attribute, field in attributes.items():
        if attribute in row.scores:
            record[field] = row.scores[attribute]
    return record
