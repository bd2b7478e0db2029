"""``sslbench report --reference lightly`` and the reference rows (supervised, random init),
on synthetic run folders written by test_report.make_run: lightly's kNN top-1 beside ours,
matched by method and epochs on imagenette2-160 only; the bounds below the methods, once
per table, in every format; a run's ``random_init`` block read as hostile input.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_report import SHA_B, make_run, md_report, md_report_and_warnings, md_tables
from test_report_latex import ENGINE, compile_latex

from sslbench.cli import main

#: lightly's protocol: imagenette2-160 at 128 px, ResNet-18, batch 256, 200 epochs.
LIGHTLY = {"dataset": "imagenette2-160", "backbone": "resnet18", "image_size": 128,
           "epochs": 200, "batch_size": 256, "test_count": 3925, "gpu_bytes": 3.8e9}  # fmt: skip
COST_GPU = "Pretraining minutes / peak GPU memory (GB)"


def add_random_init(folder: Path, **scores: Any) -> None:
    """Write a ``random_init`` block into a run's results.json, as `sslbench demo` does."""
    path = folder / "results.json"
    data = json.loads(path.read_text())
    data["random_init"] = {"probe": "linear: synthetic", "eval_seconds": 3.0, **scores}
    path.write_text(json.dumps(data))


def rows_of(table: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in table[1:]}


def run_text(capsys, dirs: list[Path], fmt: str, reference: str | None = None) -> str:
    args = ["report", *map(str, dirs), "--format", fmt]
    assert main([*args, "--reference", reference] if reference else args) == 0
    return capsys.readouterr().out


# --- --reference lightly -------------------------------------------------------------------


def test_lightly_puts_its_knn_beside_ours_and_the_difference(tmp_path, capsys):
    make_run(tmp_path, "simclr", method="simclr", transform="simclr", knn=0.81, **LIGHTLY)
    make_run(tmp_path, "byol", method="byol", transform="simclr", knn=0.70, **LIGHTLY)
    text = md_report(capsys, [tmp_path], reference="lightly")
    (knn,) = md_tables(text, "kNN top-1")
    assert knn[0] == ["method", "simclr", "simclr lightly", "simclr Δ"]
    rows = rows_of(knn)
    assert rows["simclr"] == ["**0.810**", "0.835", "-0.025"]
    assert rows["byol"] == ["0.700", "0.705", "-0.005"]
    # linear: not what lightly scores, so no columns there
    (linear,) = md_tables(text, "Linear top-1")
    assert linear[0] == ["method", "simclr"]
    (cost,) = md_tables(text, COST_GPU)
    assert cost[0] == ["method", "simclr", "simclr lightly"]
    assert rows_of(cost)["simclr"] == ["2.0 / 3.8", "49.7 / 3.7"]
    assert "its kNN evaluation after every epoch included" in text
    # whichever pipeline the run used; best epoch's vs last epoch's
    assert "lightly ran each method with its own augmentation pipeline" in text
    assert "lightly reports the best epoch's kNN top-1" in text and "the last epoch's" in text
    assert "no reproduction check" not in text  # lightly's own setting
    assert "lightly: kNN top-1 of lightly's Imagenette benchmark" in text  # the legend


def test_lightly_matches_epochs_and_says_so_elsewhere(tmp_path, capsys):
    make_run(tmp_path / "a", "simclr800", knn=0.85, **{**LIGHTLY, "epochs": 800})
    make_run(tmp_path / "b", "simclr100", knn=0.75, **{**LIGHTLY, "epochs": 100})
    text = md_report(capsys, [tmp_path], reference="lightly")
    at_100, at_800 = md_tables(text, "kNN top-1")  # sections sorted by epochs
    assert rows_of(at_800)["simclr"][1:] == ["0.889", "-0.039"]
    assert rows_of(at_100)["simclr"][1:] == ["–", "–"]
    assert text.count("exists only at 200 and 800 epochs; these runs trained 100") == 1


def test_lightly_remarks_on_other_protocols_and_alpha(tmp_path, capsys):
    common = {**LIGHTLY, "image_size": 224}
    make_run(tmp_path, "v75", method="vicregl", alpha=0.75, knn=0.7, **common)
    make_run(tmp_path, "v25", method="vicregl", alpha=0.25, knn=0.7, **common)
    text = md_report(capsys, [tmp_path], reference="lightly")
    rows = rows_of(md_tables(text, "kNN top-1")[0])
    assert rows["vicregl α=0.75"][1] == "0.689"  # lightly's VICRegL: α = 0.75
    assert rows["vicregl α=0.25"][1] == "–"
    assert "these runs differ (224 px), so the difference is no reproduction check" in text


def test_lightly_has_nothing_for_another_dataset(tmp_path, capsys):
    make_run(tmp_path, "nette", knn=0.8, **{**LIGHTLY, "dataset": "imagenette2"})
    make_run(tmp_path, "fm", knn=0.8)
    text = md_report(capsys, [tmp_path], reference="lightly")
    for table in md_tables(text, "kNN top-1"):
        assert table[0][2] == "baseline lightly"
        assert all(row[2:] == ["–", "–"] for row in table[1:])
    for dataset in ("fashion-mnist", "imagenette2"):
        assert (
            f"lightly's Imagenette benchmark has no numbers for {dataset} "
            "(it ran imagenette2-160)." in text
        )
    assert "own augmentation pipeline" not in text  # no lightly cell anywhere


def test_lightly_and_study_in_json_and_csv(tmp_path, capsys):
    make_run(tmp_path, "simclr", knn=0.81, top1=0.7, **LIGHTLY)
    document = json.loads(run_text(capsys, [tmp_path], "json", "lightly"))
    assert document["reference"] == "lightly"
    (cell,) = document["sections"][0]["cells"]
    assert cell["reference_metric"] == "knn_top1" and cell["reference_value"] == 0.835
    assert cell["reference_diff"] == pytest.approx(-0.025)
    assert cell["reference_minutes"] == 49.7 and cell["reference_peak_gpu_gb"] == 3.7
    assert cell["study_top1"] is None and cell["diff"] is None  # the study's own columns
    (row,) = csv.DictReader(io.StringIO(run_text(capsys, [tmp_path], "csv", "lightly")))
    assert row["reference"] == "lightly" and row["reference_value"] == "0.835"
    # the study on the same run: its linear top-1 (imagenette2-160, baseline) in both the
    # study's own columns and the generic ones
    (row,) = csv.DictReader(io.StringIO(run_text(capsys, [tmp_path], "csv", "study")))
    assert row["reference_metric"] == "linear_top1"
    assert row["study_top1"] == row["reference_value"] != ""
    assert float(row["diff"]) == pytest.approx(0.7 - float(row["study_top1"]))
    assert json.loads(run_text(capsys, [tmp_path], "json"))["reference"] is None


def test_lightly_in_latex_names_its_rows(tmp_path, capsys):
    make_run(tmp_path, "simclr", knn=0.81, **LIGHTLY)
    text = run_text(capsys, [tmp_path], "latex", "lightly")
    assert r"\quad lightly & 0.835 \\" in text
    assert r"\quad $\Delta$ & -0.025 \\" in text
    assert "Under each method: lightly's value, and $\\Delta$ = yours $-$ lightly's." in text


# --- the reference rows --------------------------------------------------------------------


def bounded_grid(root: Path, **common: Any) -> Path:
    """simclr and byol, and a supervised run scoring above both, × two pipelines; the
    random_init block in one simclr run."""
    values = {"simclr": 0.61, "byol": 0.64, "supervised": 0.9}
    for method, top1 in values.items():
        for transform in ("baseline", "simclr"):
            make_run(root, f"{method}-{transform}", method=method, transform=transform,
                     top1=top1, knn=top1 - 0.1, **common)  # fmt: skip
    add_random_init(root / "simclr-baseline", linear_top1=0.21, linear_top5=0.6, knn_top1=0.15)
    return root


def test_reference_rows_come_last_once_per_table_and_never_bold(tmp_path, capsys):
    text = md_report(capsys, [bounded_grid(tmp_path)])
    expected = {"Linear top-1": ("0.900", "0.210"), "Linear top-5": ("0.900", "0.600"),
                "kNN top-1": ("0.800", "0.150")}  # fmt: skip
    for title, (supervised, random_init) in expected.items():
        (table,) = md_tables(text, title)
        labels = [row[0] for row in table[1:]]
        assert labels[:3] == ["simclr", "byol", "supervised (labels)"], title
        assert re.fullmatch(r"random init\[\^\d+\]", labels[3]) and len(labels) == 4
        assert table[3][1:] == [supervised, supervised]
        assert table[4][1:] == [random_init, random_init]  # the same in every column
        assert not any("**" in cell for cell in table[3][1:] + table[4][1:])
    linear = rows_of(md_tables(text, "Linear top-1")[0])
    assert linear["byol"] == ["**0.640**", "**0.640**"]  # the best SSL method is bold
    for title in (COST_GPU.replace("GPU memory (GB)", "host memory (GB, no GPU)"),
                  "Time and memory per method"):  # fmt: skip
        (cost,) = md_tables(text, title)
        assert [row[0] for row in cost[1:]] == ["simclr", "byol", "supervised (labels)"]
    note = re.search(r"\[\^(\d+)\]: random init: the backbone untrained", text)
    assert note and "simclr-baseline's results.json" in text
    assert "Reference rows, below the methods" in text


def test_reference_rows_in_every_format(tmp_path, capsys):
    bounded_grid(tmp_path)
    rows = list(csv.DictReader(io.StringIO(run_text(capsys, [tmp_path], "csv"))))
    assert [r["bound"] for r in rows] == ["", "", "", "", "supervised", "supervised",
                                          "random_init"]  # fmt: skip
    last = rows[-1]
    assert last["method"] == "random_init" and last["transform"] == ""
    assert last["linear_top1_mean"] == "0.21" and last["knn_top1_mean"] == "0.15"
    assert last["n_runs"] == "1" and last["run_folders"].endswith("simclr-baseline")

    (section,) = json.loads(run_text(capsys, [tmp_path], "json"))["sections"]
    assert section["random_init"]["scores"] == {
        "linear_top1": 0.21, "linear_top5": 0.6, "knn_top1": 0.15,
    }  # fmt: skip
    assert section["random_init"]["n_runs"] == 1
    assert [m["label"] for m in section["methods"]] == ["simclr", "byol", "supervised (labels)"]
    assert [m["bound"] for m in section["methods"]] == [None, None, "supervised"]
    assert [c["bound"] for c in section["cells"]].count("random_init") == 1

    page = run_text(capsys, [tmp_path], "html")
    bound_rows = re.findall(r'<tr class="bound"><td[^>]*>([^<]*)', page)
    assert bound_rows.count("supervised (labels)") == 5  # 3 accuracy tables + 2 cost tables
    assert bound_rows.count("random init") == 3  # accuracy tables only

    text = run_text(capsys, [tmp_path], "latex")
    for body in re.findall(r"\\midrule\n(.*?)\\bottomrule", text, flags=re.S):
        lines = body.splitlines()
        if any(line.startswith("supervised (labels)") for line in lines):
            index = lines.index(next(x for x in lines if x.startswith("supervised")))
            assert lines[index - 1] == r"\midrule"  # a rule sets them apart
    assert text.count(r"random init\textsuperscript{") == 3


def test_random_init_is_shared_by_its_dataset_backbone_and_size(tmp_path, capsys):
    """A section takes any run's block of the same dataset, backbone, image size and test
    images, whatever its epochs; the first by name is shown, the count and any
    disagreement beyond the probe's noise said in its note."""
    a = make_run(tmp_path, "a", epochs=1, test_count=3925)
    b = make_run(tmp_path, "b", epochs=2, test_count=3925)
    make_run(tmp_path, "c", epochs=2, backbone="resnet18", test_count=3925)
    make_run(tmp_path, "d", epochs=2, sha=SHA_B, test_count=3925)
    add_random_init(a, linear_top1=0.20, knn_top1=0.10)
    add_random_init(b, linear_top1=0.205, knn_top1=0.30)
    text = md_report(capsys, [tmp_path])
    tables = md_tables(text, "kNN top-1")
    assert len(tables) == 4
    shown = [rows_of(t).get(next((k for k in rows_of(t) if k.startswith("random init")), ""))
             for t in tables]  # fmt: skip
    assert sorted(map(str, shown)) == ["None", "None", "['0.100']", "['0.100']"]
    assert text.count("2 runs hold one, differing by more than the probe's noise: ") == 1
    assert re.search(r"noise: knn\\_top1 0\.100 to 0\.300$", text, flags=re.M)


def test_random_init_agreeing_blocks_and_copies_count_once(tmp_path, capsys):
    first = make_run(tmp_path, "a", seed=0, test_count=3925)
    second = make_run(tmp_path, "b", seed=1, test_count=3925)
    add_random_init(first, linear_top1=0.20)
    add_random_init(second, linear_top1=0.21)
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "a"
    copy.mkdir()
    for name in ("results.json", "config.yaml"):
        (copy / name).write_bytes((first / name).read_bytes())
    text, _ = md_report_and_warnings(capsys, [tmp_path])
    assert "2 runs hold one, agreeing within the probe's noise" in text


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("[0.2]", "random_init is not a mapping"),
        ('{"linear_top1": 1.5}', "random_init.linear_top1=1.5 is outside [0, 1]"),
        ('{"knn_top1": "0.2"}', "random_init.knn_top1 is not a number"),
        (
            '{"linear_top1": 0.2, "test_subset": {"sha256": "zz"}}',
            "random_init.test_subset.sha256 is not a digest",
        ),
    ],
)
def test_a_bad_random_init_block_skips_its_run(tmp_path, capsys, block, message):
    make_run(tmp_path, "good", top1=0.7)
    bad = make_run(tmp_path, "bad", method="byol")
    path = bad / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "random_init": json.loads(block)}))
    text, warnings = md_report_and_warnings(capsys, [tmp_path])
    assert f"skipping {bad}: results.json: {message}" in warnings
    assert "1 run folder skipped" in text and "random init" not in text


def test_a_random_init_block_without_scores_adds_no_row(tmp_path, capsys):
    add_random_init(make_run(tmp_path, "a"), linear_top1=None, knn_top1=None)
    assert "random init" not in md_report(capsys, [tmp_path])


@pytest.mark.skipif(ENGINE is None, reason="no LaTeX engine (make latex installs texlive)")
def test_reference_rows_and_lightly_compile(tmp_path, capsys):
    runs = bounded_grid(tmp_path / "runs", **LIGHTLY)
    build = tmp_path / "build"
    build.mkdir()
    log = compile_latex(run_text(capsys, [runs], "latex", "lightly"), build)
    overfull = [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]
    assert not overfull, overfull
