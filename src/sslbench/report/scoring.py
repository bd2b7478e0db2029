"""How each number was scored, and which run folders hold one run.

- Every accuracy comes from an evaluation protocol whose settings results.json records
  under ``evaluations`` (the linear probe's iterations, folds and L2 grid, kNN's k and
  temperature, the SGD probe's epochs, ...). Two runs' numbers are averaged only when the
  protocols behind them have equal settings; a run without ``evaluations`` was scored by
  an older sslbench, whose settings were not recorded: equal only to other such runs.
- A run is its settings (the config minus the keys that change nothing) and its seed: the
  folders holding one run are counted once.
- A run's ``caveats`` belong beside the numbers they qualify: each is routed to the tables
  its first words name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

from sslbench.report.collect import KNN_FIELD, Run, knn_field_order
from sslbench.report.model import short

#: Settings a protocol records that are what it chose, not how it was set up (the L2
#: strength its cross-validation picked): runs differing in them were scored alike.
OUTCOME_KEYS = frozenset({"l2", "selection_accuracy", "description", "caveats"})

#: Run attribute -> the ``evaluations`` entries whose settings produced it (the few-shot
#: probes are the linear probe on fewer labels: both entries).
METRIC_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "linear_top1": ("linear",),
    "linear_top5": ("linear",),
    "knn_top1": ("knn_top1",),
    "sgd_linear_top1": ("sgd_linear",),
    "sgd_linear_top5": ("sgd_linear",),
    "finetune_top1": ("finetune",),
    "linear_top1_1pct": ("few_shot", "linear"),
    "linear_top1_10pct": ("few_shot", "linear"),
}
#: A run from before ``evaluations``: its protocols' settings were not recorded.
OLDER = {"recorded": "no (an older sslbench)"}
OLDER_LABEL = "older evaluation"
RECORDED_LABEL = "recorded evaluation"


def metric_value(run: Run, attribute: str) -> float | None:
    """The run's number for a Run attribute or a kNN variant field (knn_top1_k20)."""
    if KNN_FIELD.fullmatch(attribute):
        return run.knn_variants.get(attribute)
    value = getattr(run, attribute)
    assert value is None or isinstance(value, float)
    return value


def protocols_of(attribute: str) -> tuple[str, ...]:
    """The ``evaluations`` entries behind an attribute (a kNN variant: its own)."""
    return METRIC_PROTOCOLS.get(attribute, (attribute,) if KNN_FIELD.fullmatch(attribute) else ())


def knn_title(field: str) -> str:
    """'knn_top1_k20' -> 'kNN top-1, k=20'; 'knn_top1_k200_t0.07' -> '..., k=200, T=0.07'."""
    match = KNN_FIELD.fullmatch(field)
    assert match is not None
    return f"kNN top-1, k={match[1]}" + ("" if match[2] is None else f", T={match[2]}")


def knn_fields(runs: Sequence[Run]) -> list[str]:
    """Every kNN variant field some run has, k ascending."""
    return sorted({f for run in runs for f in run.knn_variants}, key=knn_field_order)


def protocol(run: Run, entry: str) -> dict[str, str]:
    """The settings of one protocol as the run recorded them, outcomes left out."""
    if run.evaluations is None:
        settings = dict(OLDER)
        if entry == "sgd_linear" and run.legacy_sgd_probe:
            settings["probe"] = run.legacy_sgd_probe
        if entry == "finetune" and run.legacy_finetune:
            settings["finetune"] = run.legacy_finetune
        return settings
    recorded = run.evaluations.get(entry)
    if recorded is None:
        return {"recorded": "no"}
    return {key: value for key, value in recorded.items() if key not in OUTCOME_KEYS}


def _text(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def scored_protocols(run: Run, attributes: Sequence[str]) -> dict[str, str]:
    """entry -> its settings as text, for each protocol behind a number the run has."""
    entries = {
        entry
        for attribute in attributes
        if metric_value(run, attribute) is not None
        for entry in protocols_of(attribute)
    }
    return {entry: _text(protocol(run, entry)) for entry in sorted(entries)}


#: A row's scoring: (protocol, its settings as text, label part) per protocol that splits.
Scoring = tuple[tuple[str, str, str], ...]


def scoring_rows(
    runs: Sequence[Run], cells: dict[str, list[Run]], attributes: Sequence[str]
) -> tuple[dict[int, Scoring], dict[Scoring, str]]:
    """Where runs of one cell (``cells``: pipeline -> runs) were scored by protocols with
    different settings, each run's scoring key (by id) that splits them into rows, and a
    note per key saying why. Runs without a number from a protocol that splits join the
    rows of the protocol most of the others used."""
    profiles = {id(run): scored_protocols(run, attributes) for run in runs}
    differing: set[str] = set()
    for cell_runs in cells.values():
        seen: dict[str, set[str]] = defaultdict(set)
        for run in cell_runs:
            for entry, text in profiles[id(run)].items():
                seen[entry].add(text)
        differing.update(entry for entry, texts in seen.items() if len(texts) > 1)
    if not differing:
        return {id(run): () for run in runs}, {}
    usual: dict[str, str] = {}
    for entry in differing:
        counts: dict[str, int] = defaultdict(int)
        for run in runs:
            if entry in profiles[id(run)]:
                counts[profiles[id(run)][entry]] += 1
        usual[entry] = max(sorted(counts), key=counts.__getitem__)
    by_text = {
        (entry, profiles[id(run)][entry]): protocol(run, entry)
        for run in runs
        for entry in differing
        if entry in profiles[id(run)]
    }
    keys: dict[int, Scoring] = {}
    for run in runs:
        texts = [(entry, profiles[id(run)].get(entry, usual[entry])) for entry in sorted(differing)]
        keys[id(run)] = tuple((e, text, _label(e, text, by_text)) for e, text in texts)
    notes = {key: _why(key, set(keys.values())) for key in set(keys.values())}
    return keys, notes


def _label(entry: str, text: str, by_text: dict[tuple[str, str], dict[str, str]]) -> str:
    """A row's label part for one protocol: the settings that tell its runs apart."""
    settings = by_text[(entry, text)]
    if settings.get("recorded") == OLDER["recorded"]:
        return OLDER_LABEL
    others = [
        s
        for (e, _), s in by_text.items()
        if e == entry and s != settings and s.get("recorded") != OLDER["recorded"]
    ]
    names = set(settings).union(*others)
    keys = sorted(k for k in names if any(o.get(k) != settings.get(k) for o in others))
    if not keys:
        return RECORDED_LABEL
    parts = [f"{entry}.{k}={short(settings.get(k, '(absent)'))}" for k in keys[:3]]
    return ", ".join(parts)


def _why(key: Scoring, keys: set[Scoring]) -> str:
    """The footnote of a row split by scoring: which protocol, and how each side differs."""
    parts = []
    for index, (entry, _, _) in enumerate(key):
        labels = sorted({other[index][2] for other in keys})
        if len(labels) > 1:
            parts.append(f"{entry}: {' vs '.join(labels)}")
    legend = ""
    if any(OLDER_LABEL in part for part in parts):
        legend = (
            f" ({OLDER_LABEL}: results.json without `evaluations`, scored by an older "
            "sslbench whose protocol settings were not recorded)"
        )
    return (
        "scored with different evaluation settings, so never averaged together: "
        + "; ".join(parts)
        + legend
    )


def legacy_sgd_note(run: Run) -> str:
    """The note on the linear cells of an older run whose linear numbers were the SGD
    probe's: "eval.probe=sgd (2 epochs) vs L-BFGS"."""
    assert run.legacy_sgd_probe is not None
    epochs = _epochs(run.legacy_sgd_probe)
    return (
        f"scored with a different probe: eval.probe=sgd{epochs} vs L-BFGS: an older sslbench "
        "wrote lightly's SGD linear evaluation into linear_top1; shown in the SGD linear "
        "table, never averaged with the L-BFGS probe"
    )


def _epochs(probe: str) -> str:
    words = probe.split()
    for before, word in zip(words, words[1:], strict=False):
        if word.startswith("epoch") and before.isdigit():
            return f" ({before} epoch{'s' * (before != '1')})"
    return ""


# --- caveats -------------------------------------------------------------------------------

#: A caveat's first word(s) -> the table kinds it qualifies; others qualify every accuracy.
CAVEAT_PREFIXES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("knn",), ("knn",)),  # and every kNN variant table
    (("few-shot", "few shot"), ("few1", "few10")),
    (("pretext",), ("pretext",)),
    (("sgd", "linear (sgd)", "lightly's sgd"), ("sgd",)),
    (("fine-tun", "finetun"), ("finetune",)),
    (("online",), ("online",)),
    (("linear",), ("top1", "top5")),
)


def caveat_applies(caveat: str, kind: str, shown: Collection[str]) -> bool:
    """Whether a caveat is a footnote on the cells of a table of ``kind``, among the
    tables ``shown``: those its first words name (the linear top-1 table when none of
    them is shown); a caveat that names none goes to every accuracy table."""
    text = caveat.lower()
    for prefixes, kinds in CAVEAT_PREFIXES:
        if text.startswith(prefixes):
            targets = [k for k in shown if k in kinds or ("knn" in kinds and _is_knn(k))]
            return kind in targets if targets else kind == "top1"
    return kind not in ("cellcost", "cost")


def _is_knn(kind: str) -> bool:
    return kind == "knn" or KNN_FIELD.fullmatch(kind) is not None


# --- one run, one count --------------------------------------------------------------------


def run_identity(run: Run) -> tuple[object, ...] | None:
    """What makes two folders one run: its settings (config hash), its seed and the test
    images it was scored on; None without a seed (never counted as a copy)."""
    if run.seed is None:
        return None
    subset = None if run.test_subset is None else run.test_subset.sha256
    return (tuple(sorted(run.settings.items())), run.pretext, run.seed, subset)


def count_once(runs: Sequence[Run]) -> tuple[list[Run], list[str], int]:
    """Each run once: of the folders holding one, a completed one, then the one that
    finished last; a completed copy's numbers that it lacks (an evaluation only the copy
    holds) are added to it (see :func:`_merge`). Returns the runs kept, one notice per run
    held twice or more (naming the folders) and how many folders were left out."""
    groups: dict[tuple[object, ...], list[Run]] = defaultdict(list)
    kept: list[Run] = []
    for run in runs:
        identity = run_identity(run)
        if identity is None:
            kept.append(run)
        else:
            groups[identity].append(run)
    notices = []
    dropped = 0
    for members in groups.values():
        order = sorted(members, key=lambda r: (r.status == "completed", r.finished, r.name))
        best = order[-1]
        if len(members) == 1:
            kept.append(best)
            continue
        dropped += len(members) - 1
        merged, added = _merge(best, order[-2::-1])
        kept.append(merged)
        others = sorted(r.name for r in members if r is not best)
        why = "completed, finished last" if best.status == "completed" else best.status
        also = "".join(f"; {', '.join(fields)} from {name}" for name, fields in added.items())
        notices.append(
            f"{len(members)} folders hold one run ({best.method}, pipeline {best.transform}, "
            f"seed {best.seed}, same settings): counted once, from {best.name} ({why}{also}); "
            f"also held by: {', '.join(others)}"
        )
    kept.sort(key=lambda r: r.name)
    return kept, sorted(notices), dropped


def _merge(best: Run, copies: Sequence[Run]) -> tuple[Run, dict[str, list[str]]]:
    """``best`` with the numbers it lacks taken from completed copies (in the order
    given), each with the protocol settings that produced it; only from a copy whose
    protocols were recorded as ``best``'s were (both, or neither: an older sslbench).
    Returns the run and, per copy, the fields taken from it."""
    if best.status != "completed":
        return best, {}
    fields: dict[str, Any] = {}
    knn = dict(best.knn_variants)
    evaluations = None if best.evaluations is None else dict(best.evaluations)
    caveats = list(best.caveats)
    added: dict[str, list[str]] = defaultdict(list)
    for copy in copies:
        if copy.status != "completed" or (copy.evaluations is None) != (evaluations is None):
            continue
        names = [a for a in METRIC_PROTOCOLS if a not in fields and getattr(best, a) is None]
        names += [f for f in copy.knn_variants if f not in knn]
        for name in names:
            value = metric_value(copy, name)
            if value is None:
                continue
            if name in copy.knn_variants:
                knn[name] = value
            else:
                fields[name] = value
            added[copy.name].append(name)
            for entry in protocols_of(name):
                if evaluations is not None and copy.evaluations is not None:
                    if entry in copy.evaluations and entry not in evaluations:
                        evaluations[entry] = copy.evaluations[entry]
            if name.startswith("sgd_linear") and copy.legacy_sgd_probe:
                fields["legacy_sgd_probe"] = copy.legacy_sgd_probe
            if name == "finetune_top1" and copy.legacy_finetune:
                fields["legacy_finetune"] = copy.legacy_finetune
        if added.get(copy.name):
            caveats.extend(c for c in copy.caveats if c not in caveats)
    if not added:
        return best, {}
    merged = replace(best, knn_variants=knn, evaluations=evaluations, caveats=caveats, **fields)
    return merged, dict(added)
