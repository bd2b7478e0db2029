"""``sslbench report`` never averages numbers scored differently, counts a run once however
many folders hold it, and prints the caveats runs recorded beside their numbers (issue 22,
points 1 and 6). Synthetic run folders (tests/report/test_report.py's make_run), no training.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_report import make_run, md_report, md_report_and_warnings, md_tables, report

SGD_PROBE = (
    "linear (SGD): frozen backbone, linear head trained 2 epochs on crop+flip views of 128 "
    "train images, SGD lr 0.1 x 64/256, momentum 0.9, no weight decay, cosine per step "
    "(lightly's benchmark); tested on 64 images"
)
LINEAR = {"protocol": "lbfgs", "max_iter": 200, "folds": 5, "l2_grid": [1e-6, 1e-4, 1e-2],
          "l2": 1e-4, "train_images": 128}  # fmt: skip
KNN = {"k": 200, "temperature": 0.1}


def update(folder: Path, **fields: Any) -> Path:
    """Change fields of a run folder's results.json."""
    path = folder / "results.json"
    results = json.loads(path.read_text())
    results.update(fields)
    path.write_text(json.dumps(results))
    return folder


def schema3(folder: Path, evaluations: dict[str, Any] | None = None, **fields: Any) -> Path:
    """A run folder as sslbench writes it from results.json schema 3 on."""
    evaluations = {"linear": LINEAR, "knn_top1": KNN} if evaluations is None else evaluations
    return update(folder, schema_version=3, evaluations=evaluations, **fields)


def unescape(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def note(text: str, cell: str) -> list[str]:
    """The footnote texts a Markdown cell refers to, as plain text."""
    numbers = re.findall(r"\[\^(\d+)\]", cell)
    return [unescape(re.search(rf"^\[\^{n}\]: (.*)$", text, flags=re.M)[1]) for n in numbers]


def csv_rows(capsys, root: Path) -> list[dict[str, str]]:
    report([root], "csv")
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


# --- probes kept apart ---------------------------------------------------------------------


def test_an_older_sgd_scored_run_is_never_averaged_with_the_lbfgs_probe(tmp_path, capsys):
    """results.json of schema 2 scored with eval.probe=sgd held the SGD numbers in
    linear_top1: they are read as the SGD probe's, in their own table, with a note."""
    make_run(tmp_path, "lbfgs", seed=0, top1=0.729)
    update(make_run(tmp_path, "sgd", seed=1, top1=0.471, top5=0.8), probe=SGD_PROBE)
    text = md_report(capsys, [tmp_path])
    (top1,) = md_tables(text, "Linear top-1")
    cell = top1[1][1]
    assert cell.startswith("**0.729**") and "n=2" not in cell and "0.600" not in text
    (why,) = note(text, cell)
    assert why.startswith("scored with a different probe: eval.probe=sgd (2 epochs) vs L-BFGS")
    (sgd,) = md_tables(text, "SGD linear top-1 (lightly's linear evaluation, eval.probe=sgd)")
    assert sgd[1][1] == "**0.471**"
    (knn,) = md_tables(text, "kNN top-1")
    assert knn[1][1] == "**0.400 ± 0.000** (n=2)"  # kNN was scored alike: averaged
    (row,) = csv_rows(capsys, tmp_path)
    assert float(row["linear_top1_mean"]) == 0.729 and row["linear_top1_std"] == ""
    assert float(row["linear_top5_mean"]) == 0.9
    assert float(row["sgd_linear_top1_mean"]) == 0.471


def test_schema_3_runs_are_read_and_the_sgd_probe_has_its_own_table(tmp_path, capsys):
    run = make_run(tmp_path, "both", top1=0.729)
    schema3(
        run,
        {"linear": LINEAR, "knn_top1": KNN, "sgd_linear": {"epochs": 2, "lr": 0.1}},
        sgd_linear_top1=0.471,
        sgd_linear_top5=0.8,
    )
    text, warnings = md_report_and_warnings(capsys, [tmp_path])
    assert "skipping" not in warnings
    assert md_tables(text, "Linear top-1")[0][1][1] == "**0.729**"
    (sgd,) = md_tables(text, "SGD linear top-1 (lightly's linear evaluation, eval.probe=sgd)")
    assert sgd[1][1] == "**0.471**"


def test_runs_scored_with_other_protocol_settings_are_separate_rows(tmp_path, capsys):
    """Same settings, two seeds: the linear probe's folds differ, so the runs are not
    averaged; the L2 strength each run's cross-validation chose is an outcome, not a
    setting, and does not split them."""
    schema3(make_run(tmp_path, "a", seed=0, top1=0.70))
    schema3(
        make_run(tmp_path, "b", seed=1, top1=0.72),
        {"linear": {**LINEAR, "l2": 1e-2}, "knn_top1": KNN},
    )
    schema3(
        make_run(tmp_path, "c", seed=2, top1=0.60),
        {"linear": {**LINEAR, "folds": 3}, "knn_top1": KNN},
    )
    text = md_report(capsys, [tmp_path])
    (table,) = md_tables(text, "Linear top-1")
    rows = {re.sub(r"\[\^\d+\]", "", row[0]): row for row in table[1:]}
    assert set(rows) == {"simclr (linear.folds=3)", "simclr (linear.folds=5)"}
    assert rows["simclr (linear.folds=5)"][1] == "**0.710 ± 0.014** (n=2)"
    assert rows["simclr (linear.folds=3)"][1] == "0.600"
    (why,) = note(text, rows["simclr (linear.folds=3)"][0])
    assert why == (
        "scored with different evaluation settings, so never averaged together: "
        "linear: linear.folds=3 vs linear.folds=5"
    )
    assert note(text, rows["simclr (linear.folds=5)"][0]) == [why]


def test_runs_of_an_older_sslbench_are_not_averaged_with_recorded_ones(tmp_path, capsys):
    make_run(tmp_path, "old", seed=0, top1=0.70)
    schema3(make_run(tmp_path, "new", seed=1, top1=0.60))
    text = md_report(capsys, [tmp_path])
    (table,) = md_tables(text, "Linear top-1")
    labels = [re.sub(r"\[\^\d+\]", "", row[0]) for row in table[1:]]
    assert sorted(labels) == ["simclr (older evaluation)", "simclr (recorded evaluation)"]
    assert "n=2" not in text
    (why,) = note(text, table[1][0])
    assert "knn_top1: older evaluation vs recorded evaluation" in why
    assert "results.json without `evaluations`" in why


# --- one run, one count --------------------------------------------------------------------


def test_a_run_held_by_several_folders_counts_once(tmp_path, capsys):
    """Copies of one run (same settings and seed): a completed one is kept before a failed
    one, the one finished last before the others; one warning names the folders."""
    first = make_run(tmp_path, "runs/seed0", seed=0, top1=0.70)
    update(first, finished_at="2026-12-01T10:00:00+0000")
    later = tmp_path / "copies" / "seed0-again"
    shutil.copytree(first, later)
    update(later, linear_top1=0.72, finished_at="2026-12-02T10:00:00+0100")
    failed = make_run(tmp_path, "copies/seed0-failed", seed=0, status="failed", error="boom")
    update(failed, finished_at="2026-12-03T10:00:00+0000")
    make_run(tmp_path, "runs/seed1", seed=1, top1=0.74)
    text, warnings = md_report_and_warnings(capsys, [tmp_path])
    (table,) = md_tables(text, "Linear top-1")
    assert table[1][1] == "**0.730 ± 0.014** (n=2)"  # seed 0 from seed0-again, and seed 1
    lines = [line for line in warnings.splitlines() if "counted once" in line]
    assert len(lines) == 1
    assert f"from {later}" in lines[0] and str(first) in lines[0] and str(failed) in lines[0]
    assert "2 runs (2 more folders held copies: counted once)" in text
    assert lines[0].removeprefix("sslbench report: ") in unescape(text)
    report([tmp_path], "json")
    document = json.loads(capsys.readouterr().out)
    assert document["n_runs"] == 2 and document["n_duplicates"] == 2
    assert len(document["notices"]) == 1


def test_an_sgd_scored_copy_of_a_run_adds_its_sgd_numbers_once(tmp_path, capsys):
    """The issue's case: a run, and a copy of its folder re-scored by an older sslbench
    with eval.probe=sgd (which wrote the SGD numbers into linear_top1): one run, its
    L-BFGS probe in the linear table, the copy's SGD probe in the SGD table."""
    lbfgs = make_run(tmp_path, "D", top1=0.729)
    copy = tmp_path / "D-sgd"
    shutil.copytree(lbfgs, copy)
    update(copy, linear_top1=0.471, linear_top5=0.8, probe=SGD_PROBE)
    text, warnings = md_report_and_warnings(capsys, [tmp_path])
    (top1,) = md_tables(text, "Linear top-1")
    assert top1[1][1] == "**0.729**"  # n=1, no note: the L-BFGS number of the one run
    (sgd,) = md_tables(text, "SGD linear top-1 (lightly's linear evaluation, eval.probe=sgd)")
    assert sgd[1][1] == "**0.471**"
    (line,) = [line for line in warnings.splitlines() if "counted once" in line]
    # whichever folder is kept, the other one's numbers are named with it
    assert (f"from {copy} (completed, finished last; linear_top1, linear_top5 from {lbfgs})"
            in line) or (f"from {lbfgs} (completed, finished last; sgd_linear_top1, "
                         f"sgd_linear_top5 from {copy})" in line)  # fmt: skip
    assert "1 run (1 more folder held copies: counted once)" in text


def test_runs_of_other_seeds_or_settings_are_not_copies(tmp_path, capsys):
    make_run(tmp_path, "a", seed=0, top1=0.70)
    make_run(tmp_path, "b", seed=1, top1=0.72)
    make_run(tmp_path, "c", seed=0, top1=0.60, method_extra={"temperature": 0.1})
    text, warnings = md_report_and_warnings(capsys, [tmp_path])
    assert "counted once" not in warnings + text and "3 runs in 1" in text


# --- caveats beside the numbers ------------------------------------------------------------


def test_caveats_are_footnotes_on_the_cells_they_concern(tmp_path, capsys):
    knn = "kNN: k=200 exceeds the ~13 train images per class, so most votes come from others"
    few = "few-shot 1% of the labels is 10 images"
    other = "dataset.max_train=128 of 60000 images"
    schema3(
        make_run(tmp_path, "a", top1=0.70),
        {"linear": LINEAR, "knn_top1": KNN, "few_shot": {"fractions": [0.01, 0.1]}},
        caveats=[knn, few, other, knn],
        linear_top1_1pct=0.31,
        linear_top1_10pct=0.52,
    )
    schema3(make_run(tmp_path, "b", method="byol", top1=0.68))
    text = md_report(capsys, [tmp_path])
    cells = {
        title: md_tables(text, title)[0][1][1]
        for title in ("Linear top-1", "Linear top-5", "kNN top-1",
                      "Linear top-1, 1% of the labels", "Linear top-1, 10% of the labels")
    }  # fmt: skip
    assert sorted(note(text, cells["kNN top-1"])) == sorted([knn, other])
    assert sorted(note(text, cells["Linear top-1, 1% of the labels"])) == sorted([few, other])
    assert note(text, cells["Linear top-1"]) == [other]
    assert note(text, cells["Linear top-5"]) == [other]
    assert "[^" not in md_tables(text, "Linear top-1")[0][2][1]  # byol recorded none
    (cost,) = md_tables(text, "Pretraining minutes / peak host memory (GB, no GPU)")
    assert "[^" not in cost[1][1]
    rows = csv_rows(capsys, tmp_path)
    by_method = {r["method"]: r["caveats"] for r in rows}
    assert by_method["simclr"] == "; ".join(sorted([knn, few, other]))


def test_a_pretext_head_at_chance_shows_its_chance_and_is_never_best(tmp_path, capsys):
    common = {"transform": "lorot", "pretext": "lorot"}
    schema3(make_run(tmp_path, "at", pretext_accuracy=0.26, **common), pretext_chance=0.25)
    old = make_run(tmp_path, "old", method="byol", pretext_accuracy=0.262, **common)
    update(old, pretext_task="lorot, weight 0.1; accuracy: rotation class of the turned "
           "region (LoRot-I, 4 classes, chance 0.25)")  # fmt: skip
    text = md_report(capsys, [tmp_path])
    (table,) = md_tables(text, "Pretext-task accuracy")
    rows = {row[0]: row[1] for row in table[1:]}
    at, older = rows["simclr + pretext lorot"], rows["byol + pretext lorot"]
    assert at.startswith("0.260 (chance 0.25)") and older.startswith("0.262 (chance 0.25)")
    assert "**" not in at + older  # within 0.02 of chance: no best
    (why,) = note(text, at)
    assert why.startswith("pretext head at chance") and note(text, older) == [why]
    schema3(make_run(tmp_path, "learnt", seed=1, pretext_accuracy=0.6, method="swav",
                     **common), pretext_chance=0.25)  # fmt: skip
    (table,) = md_tables(md_report(capsys, [tmp_path]), "Pretext-task accuracy")
    assert {row[0]: row[1] for row in table[1:]}["swav + pretext lorot"] == (
        "**0.600** (chance 0.25)"
    )


def test_knn_at_other_settings_has_its_own_table_and_columns(tmp_path, capsys):
    schema3(
        make_run(tmp_path, "a", knn=0.40),
        {"linear": LINEAR, "knn_top1": KNN, "knn_top1_k20": {"k": 20, "temperature": 0.1}},
        knn_top1_k20=0.45,
        **{"knn_top1_k200_t0.07": 0.41},
    )
    text = md_report(capsys, [tmp_path])
    assert md_tables(text, "kNN top-1")[0][1][1] == "**0.400**"
    assert md_tables(text, "kNN top-1, k=20")[0][1][1] == "**0.450**"
    assert md_tables(text, "kNN top-1, k=200, T=0.07")[0][1][1] == "**0.410**"
    (row,) = csv_rows(capsys, tmp_path)
    assert float(row["knn_top1_mean"]) == 0.4 and float(row["knn_top1_k20_mean"]) == 0.45


# --- hostile input in the new fields -------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"evaluations": "lbfgs"},
        {"evaluations": {"linear": [1, 2]}},
        {"evaluations": {"<script>": {}}},
        {"caveats": "one caveat"},
        {"caveats": ["fine", 3]},
        {"sgd_linear_top1": "0.5"},
        {"knn_top1_k20": 2.0},
        {"pretext_chance": -1},
    ],
)
def test_malformed_new_fields_skip_the_run_with_one_line(tmp_path, capsys, fields):
    make_run(tmp_path, "good", top1=0.7)
    schema3(make_run(tmp_path, "bad"), **fields)
    text, warnings = md_report_and_warnings(capsys, [tmp_path])
    assert "1 run folder skipped" in text
    (line,) = [line for line in warnings.splitlines() if "bad" in line]
    assert line.startswith("sslbench report: skipping ") and "results.json" in line


def test_a_caveat_is_one_escaped_line_and_their_number_is_capped(tmp_path, capsys):
    caveats = ["first | <b>x</b>\nsecond line"] + [f"note {i}" for i in range(40)]
    schema3(make_run(tmp_path, "a"), caveats=caveats)
    text = md_report(capsys, [tmp_path])
    (top1,) = md_tables(text, "Linear top-1")
    notes = note(text, top1[1][1])
    assert "first | <b>x</b>" in notes and not any("second" in n for n in notes)
    assert len(notes) == 20 and "and 22 more caveats in results.json" in notes
    report([tmp_path], "html")
    assert "<b>x</b>" not in capsys.readouterr().out
