"""``sslbench report`` on synthetic run folders: cells, aggregation, the rules on what may be
compared, hostile input, every format, the plots, and the HTML page in headless Chromium.

No training: each run folder is written by hand (results.json through write_results, a
config.yaml, a Lightning-style metrics.csv), so the whole module takes seconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from sslbench.cli import main
from sslbench.report import run_report
from sslbench.run.results import write_results

SHA_A = "1a2b3c4d" + "0" * 56
SHA_B = "9f8e7d6c" + "0" * 56
CHROMIUM = shutil.which("chromium")
CHROMIUM_TIMEOUT_S = 60
COST_CPU = "Pretraining minutes / peak host memory (GB, no GPU)"


def make_run(
    root: Path,
    name: str,
    *,
    method: str = "simclr",
    transform: str = "baseline",
    dataset: str = "fashion-mnist",
    seed: int = 0,
    top1: float | None = 0.5,
    top5: float | None = 0.9,
    knn: float | None = 0.4,
    status: str = "completed",
    error: str | None = None,
    alpha: float | None = None,
    sha: str | None = SHA_A,
    test_count: int = 64,
    backbone: str = "resnet10t",
    epochs: int = 1,
    batch_size: int = 64,
    image_size: int = 32,
    seconds: float | None = 120.0,
    gpu_bytes: float | None = None,
    host_bytes: float | None = 4.2e9,
    method_extra: dict[str, Any] | None = None,
    pretext: str | None = None,
    pretext_accuracy: float | None = None,
) -> Path:
    """A run folder as `sslbench pretrain` leaves it (without the checkpoint)."""
    folder = root / name
    folder.mkdir(parents=True)
    evaluated = status == "completed"
    results = {
        "schema_version": 2,
        "status": status,
        "error": error,
        "method": method,
        "transform": transform,
        "dataset": dataset,
        "backbone": backbone,
        "epochs": epochs,
        "batch_size": batch_size,
        "image_size": image_size,
        "linear_top1": top1 if evaluated else None,
        "linear_top5": top5 if evaluated else None,
        "knn_top1": knn if evaluated else None,
        "probe": "linear: synthetic",
        "pretrain_seconds": seconds if evaluated else None,
        "images_per_second": 100.0 + seed,
        "peak_gpu_memory_bytes": gpu_bytes,
        "peak_host_memory_bytes": host_bytes,
        "seed": seed,
        "versions": {"python": "3.11"},
        "git_sha": "0" * 40,
        "test_subset": (
            {"count": test_count, "sha256": sha, "split_size": 10000} if evaluated and sha else None
        ),
        "alpha": alpha,
        "pretext": pretext,
        "pretext_accuracy": pretext_accuracy if evaluated else None,
        "max_train": 128,
        "max_test": test_count,
    }
    write_results(folder, results)
    method_config = {"name": method, "temperature": 0.5, **(method_extra or {})}
    if alpha is not None:
        method_config["alpha"] = alpha
    config = {
        "method": method_config,
        "transform": {"name": transform, "ops": {"hflip": {"p": 0.5}}},
        "dataset": {"name": dataset, "path": None, "max_train": 128, "max_test": test_count},
        "backbone": {"name": backbone, "small_stem": False},
        "eval": {"enabled": True, "subset_seed": 0},
        "pretext": {"name": pretext or "none", **({"weight": 0.1} if pretext else {})},
        "epochs": epochs,
        "batch_size": batch_size,
        "image_size": image_size,
        "seed": seed,
        "run_dir": str(folder),
        "runs_root": "runs",
        "progress_bar": False,
        "num_workers": 0,
    }
    (folder / "config.yaml").write_text("# resolved config\n" + yaml.safe_dump(config))
    lines = ["epoch,step,train_loss_epoch,train_loss_step,effective_rank"]
    for epoch in range(3):
        lines.append(f"{epoch},{epoch * 10 + 9},,{5.0 - epoch - seed * 0.1},")
        lines.append(f"{epoch},{epoch * 10 + 9},{5.2 - epoch},,{40 + epoch}")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def grid_2x2(root: Path, **common: Any) -> Path:
    """simclr and byol × baseline and simclr pipelines, one seed each."""
    values = {
        ("simclr", "baseline"): 0.61,
        ("simclr", "simclr"): 0.64,
        ("byol", "baseline"): 0.66,
        ("byol", "simclr"): 0.59,
    }
    for (method, transform), top1 in values.items():
        make_run(
            root, f"{method}-{transform}", method=method, transform=transform, top1=top1, **common
        )
    return root


def report(dirs: list[Path], fmt: str = "md", out: Path | None = None, reference=None) -> None:
    args = SimpleNamespace(
        dirs=[str(d) for d in dirs],
        format=fmt,
        out=None if out is None else str(out),
        reference=reference,
    )
    assert run_report(args) == 0


def md_report(capsys, dirs: list[Path], reference=None) -> str:
    return md_report_and_warnings(capsys, dirs, reference)[0]


def md_report_and_warnings(capsys, dirs: list[Path], reference=None) -> tuple[str, str]:
    report(dirs, "md", reference=reference)
    captured = capsys.readouterr()
    return captured.out, captured.err


def md_tables(text: str, title: str) -> list[list[list[str]]]:
    """Every Markdown table under a "### title" heading, as rows of cell texts."""
    tables = []
    for block in text.split(f"### {title}\n")[1:]:
        rows = [line for line in block.strip().split("\n\n")[0].splitlines()]
        cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
        tables.append([cells[0], *cells[2:]])  # without the alignment row
    return tables


# --- cells and aggregation -----------------------------------------------------------------


def test_2x2_grid_gives_a_2x2_table(tmp_path, capsys):
    text = md_report(capsys, [grid_2x2(tmp_path)])
    (table,) = md_tables(text, "Linear top-1")
    header, *rows = table
    assert header == ["method", "baseline", "simclr"]
    assert [row[0] for row in rows] == ["simclr", "byol"]  # the study's method order
    assert rows[0][1:] == ["0.610", "**0.640**"]  # accuracy only: time and memory below
    assert rows[1][1:] == ["**0.660**", "0.590"]
    assert (
        "## fashion-mnist — resnet10t, 32 px, 1 epoch, batch 64, test subset 64 images "
        "(sha 1a2b3c4d)" in text
    )
    for title in ("Linear top-5", "kNN top-1", COST_CPU, "Time and memory per method"):
        (other,) = md_tables(text, title)
        assert len(other) == 3
    (cost,) = md_tables(text, COST_CPU)
    assert cost[1][1:] == ["2.0 / 4.2", "2.0 / 4.2"]


def test_seeds_aggregate_to_mean_and_sample_std(tmp_path, capsys):
    for seed, (top1, seconds) in enumerate([(0.70, 60.0), (0.72, 120.0), (0.74, 180.0)]):
        make_run(tmp_path, f"seed{seed}", seed=seed, top1=top1, seconds=seconds)
    (table,) = md_tables(md_report(capsys, [tmp_path]), "Linear top-1")
    # mean 0.72, sample std 0.02; minutes mean (1 + 2 + 3) / 3 in the cost table
    assert table[1][1] == "**0.720 ± 0.020** (n=3)"
    (cost,) = md_tables(md_report(capsys, [tmp_path]), COST_CPU)
    assert cost[1][1] == "2.0 / 4.2"


def test_runs_with_other_settings_are_not_averaged(tmp_path, capsys):
    make_run(tmp_path, "t05", top1=0.70)
    make_run(tmp_path, "t01", top1=0.60, seed=1, method_extra={"temperature": 0.1})
    (table,) = md_tables(md_report(capsys, [tmp_path]), "Linear top-1")
    labels = [row[0] for row in table[1:]]
    assert labels == ["simclr (method.temperature=0.1)", "simclr (method.temperature=0.5)"]
    assert [row[1] for row in table[1:]] == ["0.600", "**0.700**"]


def test_vicregl_has_one_row_per_alpha(tmp_path, capsys):
    for alpha in (0.95, 0.25, 0.75):
        make_run(tmp_path, f"a{alpha}", method="vicregl", alpha=alpha, top1=alpha / 2)
    make_run(tmp_path, "vicreg", method="vicreg")
    (table,) = md_tables(md_report(capsys, [tmp_path]), "Linear top-1")
    assert [row[0] for row in table[1:]] == [
        "vicreg",
        "vicregl α=0.25",
        "vicregl α=0.75",
        "vicregl α=0.95",
    ]


def test_pretext_runs_get_their_own_rows_and_accuracy_table(tmp_path, capsys):
    """A method with a pretext task is its own row beside the same method without one; the
    heads' accuracy gets its own table; the study (no pretext runs) scores only the plain
    rows; a run saved before pretext tasks (no pretext keys) shares the plain row."""
    common = {"dataset": "imagenette2", "backbone": "resnet18", "image_size": 224,
              "epochs": 200, "batch_size": 256, "test_count": 3925,
              "transform": "lorot"}  # fmt: skip
    make_run(tmp_path, "plain", top1=0.60, **common)
    old = make_run(tmp_path, "plain-old", seed=1, top1=0.62, **common)
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["pretext"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    make_run(tmp_path, "head", top1=0.64, pretext="lorot", pretext_accuracy=0.55, **common)
    text = md_report(capsys, [tmp_path], reference="study")
    (top1,) = md_tables(text, "Linear top-1")
    rows = {row[0]: row[1:] for row in top1[1:]}
    assert list(rows) == ["simclr", "simclr + pretext lorot"]
    assert rows["simclr"][0].startswith("0.610 ± 0.014 (n=2")
    assert rows["simclr"][1].startswith("0.616")  # the study's lorot cell
    assert rows["simclr + pretext lorot"][1:] == ["–", "–"]  # the study had no pretext runs
    (pretext,) = md_tables(text, "Pretext-task accuracy")
    assert [row[1] for row in pretext[1:]] == ["–", "**0.550**"]
    report([tmp_path], "csv")
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_pretext = {r["pretext"]: r for r in records}
    assert by_pretext["lorot"]["pretext_accuracy_mean"] == "0.55"
    assert by_pretext[""]["pretext_accuracy_mean"] == ""


def test_failed_interrupted_and_missing_cells(tmp_path, capsys):
    make_run(tmp_path, "ok", transform="baseline", top1=0.7)
    make_run(
        tmp_path,
        "oom",
        transform="simclr",
        status="failed",
        error="CUDA out of memory. Tried to allocate 2 GiB\nTraceback ...",
    )
    make_run(tmp_path, "killed", method="byol", transform="baseline", status="running")
    text = md_report(capsys, [tmp_path])
    (table,) = md_tables(text, "Linear top-1")
    simclr, byol = table[1], table[2]
    failed_note = re.fullmatch(r"failed\[\^(\d+)\]", simclr[2])
    assert failed_note, simclr
    assert f"[^{failed_note[1]}]: failed: CUDA out of memory. Tried to allocate 2 GiB (" in text
    assert "Traceback" not in text  # the one-line error only
    assert re.fullmatch(r"interrupted\[\^\d+\]", byol[1])
    assert byol[2] == "–"


def test_a_run_stopped_by_ctrl_c_is_interrupted(tmp_path, capsys):
    make_run(tmp_path, "ok", transform="baseline", top1=0.7)
    make_run(tmp_path, "stopped", method="byol", transform="baseline", status="interrupted")
    (table,) = md_tables(md_report(capsys, [tmp_path]), "Linear top-1")
    assert re.fullmatch(r"interrupted\[\^\d+\]", table[2][1])


def test_a_failed_run_without_test_subset_joins_its_grid(tmp_path, capsys):
    make_run(tmp_path, "ok", transform="baseline")
    make_run(tmp_path, "failed", transform="simclr", status="failed", error="boom")
    text = md_report(capsys, [tmp_path])
    assert text.count("\n## ") == 1 and "test subset 64 images" in text


def test_runs_on_other_test_subsets_are_never_in_one_table(tmp_path, capsys):
    make_run(tmp_path, "a", transform="baseline", sha=SHA_A, top1=0.7)
    make_run(tmp_path, "b", transform="simclr", sha=SHA_B, test_count=128, top1=0.8)
    text = md_report(capsys, [tmp_path])
    assert "test subset 64 images (sha 1a2b3c4d)" in text
    assert "test subset 128 images (sha 9f8e7d6c)" in text
    tables = md_tables(text, "Linear top-1")
    assert [t[0] for t in tables] == [["method", "baseline"], ["method", "simclr"]]


def test_other_backbones_and_sizes_get_their_own_tables(tmp_path, capsys):
    make_run(tmp_path, "a")
    make_run(tmp_path, "b", backbone="resnet18")
    make_run(tmp_path, "c", image_size=64)
    make_run(tmp_path, "d", batch_size=128)
    make_run(tmp_path, "e", epochs=2)
    assert len(md_tables(md_report(capsys, [tmp_path]), "Linear top-1")) == 5


def test_older_results_without_alpha_and_test_subset(tmp_path, capsys):
    folder = make_run(tmp_path, "old", method="vicregl", alpha=0.5, top1=0.6)
    results = json.loads((folder / "results.json").read_text())
    for key in ("alpha", "test_subset", "schema_version"):
        del results[key]
    (folder / "results.json").write_text(json.dumps(results))
    text = md_report(capsys, [tmp_path])
    assert "test subset not recorded" in text
    (table,) = md_tables(text, "Linear top-1")
    assert table[1][0] == "vicregl α=0.5"  # α from config.yaml


def test_completed_without_evaluation_is_not_applicable(tmp_path, capsys):
    make_run(tmp_path, "evaluated", top1=0.7)
    make_run(tmp_path, "unevaluated", transform="simclr", top1=None, top5=None, knn=None)
    text = md_report(capsys, [tmp_path])
    (table,) = md_tables(text, "Linear top-1")
    note = re.fullmatch(r"n/a\[\^(\d+)\]", table[1][2])
    assert note and f"[^{note[1]}]: n/a: the run completed without this evaluation" in text


# --- the study's numbers -------------------------------------------------------------------


def test_reference_study_on_imagenette2(tmp_path, capsys):
    common = {
        "dataset": "imagenette2",
        "backbone": "resnet18",
        "image_size": 224,
        "epochs": 200,
        "batch_size": 256,
        "test_count": 3925,
        "gpu_bytes": 11.1e9,
    }
    make_run(tmp_path, "bt", method="barlowtwins", transform="simclr", top1=0.75, **common)
    make_run(tmp_path, "sc", method="simclr", transform="simclr", top1=0.71, **common)
    make_run(
        tmp_path / "woof",
        "swav",
        method="swav",
        transform="baseline",
        top1=0.3,
        **{**common, "dataset": "imagewoof2", "test_count": 3929},
    )
    text = md_report(capsys, [tmp_path], reference="study")
    nette, woof = md_tables(text, "Linear top-1")
    assert nette[0] == ["method", "simclr", "simclr study", "simclr Δ"]
    rows = {row[0]: row[1:] for row in nette[1:]}
    assert rows["barlowtwins"][1] == "0.772"
    assert rows["barlowtwins"][2] == "-0.022"
    assert rows["simclr"][1] == "0.705" and rows["simclr"][2] == "+0.005"
    assert rows["barlowtwins"][0] == "**0.750**"
    cost = md_tables(text, "Pretraining minutes / peak GPU memory (GB)")[0]  # GPU, no "host"
    assert cost[0] == ["method", "simclr", "simclr study"]
    assert {row[0]: row[1:] for row in cost[1:]}["barlowtwins"] == ["2.0 / 11.1", "127.6 / 11.1"]
    swav = woof[1]
    note = re.fullmatch(r"0\.051\[\^(\d+)\]", swav[2])
    assert note, swav
    assert f"[^{note[1]}]: study: at or below chance (10 classes): a failed run" in text
    assert "no reproduction check" not in text  # the study's own setting: no caveat


def test_reference_columns_exist_and_are_empty_for_fashion_mnist(tmp_path, capsys):
    text = md_report(capsys, [grid_2x2(tmp_path)], reference="study")
    (table,) = md_tables(text, "Linear top-1")
    assert table[0] == [
        "method",
        "baseline",
        "baseline study",
        "baseline Δ",
        "simclr",
        "simclr study",
        "simclr Δ",
    ]
    assert all(row[i] == "–" for row in table[1:] for i in (2, 3, 5, 6))
    assert "The study has no numbers for fashion-mnist" in text


# --- formats -------------------------------------------------------------------------------


def test_latex_is_booktabs_escaped_and_balanced(tmp_path, capsys):
    grid_2x2(tmp_path)
    make_run(tmp_path, "bl", method="byol", transform="baseline_lorot", top1=0.5)
    make_run(
        tmp_path,
        "fail",
        method="vicregl",
        alpha=0.75,
        status="failed",
        error="loss is NaN at step 7: 100% & #3 {x} $y ~z ^w \\v",
    )
    report([tmp_path], "latex")
    text = capsys.readouterr().out
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\centering", r"\caption{"):
        assert text.count(command) == 5  # one section (the failed run joins it), 5 tables
    assert r"baseline\_lorot" in text and "baseline_lorot" not in text
    assert (
        r"100\% \& \#3 \{x\} \$y \textasciitilde{}z \textasciicircum{}w \textbackslash{}v" in text
    )
    assert r"vicregl $\alpha$=0.75" in text and r"\textbf{0.660}" in text
    stripped = re.sub(r"\\[{}]", "", text)
    assert stripped.count("{") == stripped.count("}")
    depth = 0
    for line in stripped.splitlines():
        if line.startswith("%"):
            continue
        depth += line.count("{") - line.count("}")
        assert depth >= 0
    begins = re.findall(r"\\begin\{(\w+)\}", text)
    ends = re.findall(r"\\end\{(\w+)\}", text)
    assert sorted(begins) == sorted(ends) and begins.count("tabular") == 5


def test_csv_long_form(tmp_path, capsys):
    grid_2x2(tmp_path)
    make_run(tmp_path, "seed1", method="simclr", transform="baseline", seed=1, top1=0.63)
    make_run(
        tmp_path,
        "failed",
        method="swav",
        transform="simclr",
        status="failed",
        error='=HYPERLINK("x")',
    )
    report([tmp_path], "csv")
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_cell = {(r["method"], r["transform"]): r for r in rows}
    assert len(rows) == 5
    assert set(by_cell) == {
        ("simclr", "baseline"),
        ("simclr", "simclr"),
        ("byol", "baseline"),
        ("byol", "simclr"),
        ("swav", "simclr"),
    }
    cell = by_cell[("simclr", "baseline")]
    assert cell["n_runs"] == "2" and float(cell["linear_top1_mean"]) == pytest.approx(0.62)
    assert float(cell["linear_top1_std"]) == pytest.approx(0.0141421, abs=1e-6)
    assert float(cell["minutes_mean"]) == 2.0 and cell["peak_gpu_gb_mean"] == ""
    assert cell["test_subset"] == SHA_A and cell["status"] == "completed"
    assert cell["study_top1"] == "" and cell["diff"] == ""
    failed = by_cell[("swav", "simclr")]
    assert failed["status"] == "failed" and failed["n_failed"] == "1"
    assert failed["error"] == '\'=HYPERLINK("x")'  # never a spreadsheet formula


def test_json_holds_the_same_cells(tmp_path, capsys):
    grid_2x2(tmp_path)
    report([tmp_path], "json", reference="study")
    document = json.loads(capsys.readouterr().out)
    (section,) = document["sections"]
    assert document["reference"] == "study" and section["dataset"] == "fashion-mnist"
    assert section["test_subset"] == {"sha256": SHA_A, "count": 64}
    cells = {(c["method"], c["transform"]): c for c in section["cells"]}
    assert cells[("byol", "baseline")]["linear_top1_mean"] == 0.66
    assert cells[("byol", "baseline")]["study_top1"] is None
    assert [m["label"] for m in section["methods"]] == ["simclr", "byol"]
    assert section["methods"][0]["minutes_mean"] == 2.0


def test_out_writes_report_and_plots(tmp_path, capsys):
    from PIL import Image

    runs = grid_2x2(tmp_path / "runs")
    out = tmp_path / "out" / "report.md"
    report([runs], "md", out=out)
    text = out.read_text()
    names = ["top1_vs_minutes", "peak_memory", "loss"]
    for name in names:
        png = out.parent / f"report_fashion-mnist_{name}.png"
        svg = out.parent / f"report_fashion-mnist_{name}.svg"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.size[0] > 100 and len(set(image.convert("L").getdata())) > 2
        assert svg.read_text().lstrip().startswith("<?xml") and "<dc:date>" not in svg.read_text()
        assert f"](<report_fashion-mnist_{name}.png>)" in text
        # readable by others, as results.json (results.atomic_write_bytes), not mkstemp's 0600
        assert stat.S_IMODE(png.stat().st_mode) == stat.S_IMODE(svg.stat().st_mode) == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["report.md"] + [f"report_fashion-mnist_{n}.{e}" for n in names for e in ("png", "svg")]
    )
    # deterministic: the same runs give the same files
    first = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    report([runs], "md", out=out)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == first


# --- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2, 3]",
        json.dumps({"status": "completed", "method": "simclr"}),  # no transform, dataset
        json.dumps({"status": "done", "method": "simclr", "transform": "x", "dataset": "d"}),
        json.dumps(
            {"status": "completed", "method": "a|b<script>", "transform": "x", "dataset": "d"}
        ),
        json.dumps(
            {
                "status": "completed",
                "method": "m",
                "transform": "x",
                "dataset": "d",
                "linear_top1": "0.9",
            }
        ),
        json.dumps(
            {
                "status": "completed",
                "method": "m",
                "transform": "x",
                "dataset": "d",
                "linear_top1": 7.0,
            }
        ),
        '{"status": "completed", "method": "m", "transform": "x", "dataset": "d", '
        '"linear_top1": NaN}',
        "[" * 100_000,
        '{"status": "completed", "method": "m", "transform": "x", "dataset": "d", '
        '"pretrain_seconds": ' + "9" * 400 + "}",
    ],
)
def test_malformed_results_are_skipped_with_a_warning(tmp_path, capsys, content):
    make_run(tmp_path, "good", top1=0.7)
    bad = make_run(tmp_path, "bad")
    (bad / "results.json").write_text(content)
    text, warnings = md_report_and_warnings(capsys, [tmp_path])
    assert "0.700" in text and "1 run folder skipped" in text
    lines = [line for line in warnings.splitlines() if "bad" in line]
    assert len(lines) == 1 and lines[0].startswith("sslbench report: skipping ")


@pytest.mark.parametrize(
    "config",
    [
        "method: [unclosed",
        "- a list",
        "a: !!python/object/apply:os.system ['touch pwned']",
        "a: &a [*a, *a]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nd: &d [*c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d]\nf: &f [*e, *e, *e, *e]\ng: &g [*f, *f, *f, *f]\nh: [*g, *g, *g]",
    ],
)
def test_malformed_config_is_skipped_and_never_executed(tmp_path, capsys, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path, "good")
    bad = make_run(tmp_path, "bad")
    (bad / "config.yaml").write_text(config)
    _, warnings = md_report_and_warnings(capsys, [tmp_path])
    assert "skipping" in warnings and "bad" in warnings
    assert not (tmp_path / "pwned").exists()


def test_symlinks_are_not_followed(tmp_path, capsys):
    outside = tmp_path / "outside"
    make_run(outside, "secret", method="swav")
    root = tmp_path / "root"
    make_run(root, "mine", method="byol")
    (root / "linked").symlink_to(outside / "secret", target_is_directory=True)
    fake = root / "fake"
    fake.mkdir()
    (fake / "results.json").symlink_to(outside / "secret" / "results.json")
    shutil.copy(outside / "secret" / "config.yaml", fake / "config.yaml")
    text, warnings = md_report_and_warnings(capsys, [root])
    assert "byol" in text and "swav" not in text
    assert "not a regular file" in warnings and "fake" in warnings


def test_hidden_folders_are_skipped(tmp_path, capsys):
    make_run(tmp_path, "visible", method="byol")
    make_run(tmp_path, ".trash", method="swav")
    text = md_report(capsys, [tmp_path])
    assert "byol" in text and "swav" not in text


def test_hostile_text_is_escaped_in_html_and_bad_metrics_cost_only_the_curve(tmp_path, capsys):
    ok = make_run(tmp_path, "ok")
    (ok / "metrics.csv").write_bytes(b"epoch,step\x00,train_loss_epoch\n\x00\xff,1,2\n")
    make_run(tmp_path, "x", transform="simclr", status="failed", error="<script>alert(1)</script>")
    report([tmp_path], "html")
    captured = capsys.readouterr()
    page = captured.out
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "0.500" in page and "skipping" not in captured.err


# --- the command line ----------------------------------------------------------------------


def test_cli_report_in_process(tmp_path, capsys):
    runs = str(grid_2x2(tmp_path))
    assert main(["report", runs, runs, "--format", "md"]) == 0  # each run folder once
    (table,) = md_tables(capsys.readouterr().out, "Linear top-1")
    assert len(table) == 3


def test_report_imports_neither_torch_nor_matplotlib_for_text(tmp_path):
    import sys

    grid_2x2(tmp_path)
    code = (
        "import sys; from sslbench.cli import main; "
        f"assert main(['report', {str(tmp_path)!r}, '--format', 'latex']) == 0; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_cli_without_run_folders_exits_1_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslbench: error: no run folder")
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith("sslbench: error: no such folder")


# --- the HTML page in a real browser -------------------------------------------------------


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    command = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=5000",
        *args,
    ]
    env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=True, env=env
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")
def test_html_renders_in_headless_chromium(tmp_path):
    from PIL import Image, ImageStat

    page = tmp_path / "report.html"
    report([grid_2x2(tmp_path / "runs")], "html", out=page)
    dom = chromium("--dump-dom", page.as_uri()).stdout
    ok = re.search(r'data-images-ok="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert ok and total, dom[:500]
    assert int(ok[1]) == int(total[1]) == 3
    bodies = re.findall(r"<tbody>(.*?)</tbody>", dom, flags=re.S)
    assert [body.count("<tr>") for body in bodies] == [2, 2, 2, 2, 2]

    # sorting: a click on the "simclr" pipeline's header puts byol (0.59) above simclr (0.64)
    clicked = tmp_path / "clicked.html"
    clicked.write_text(
        page.read_text().replace(
            "</body>", "<script>document.querySelector('th:nth-child(3)').click();</script></body>"
        )
    )
    first_table = re.search(
        r"<tbody>(.*?)</tbody>", chromium("--dump-dom", clicked.as_uri()).stdout, flags=re.S
    )[1]
    labels = re.findall(r'<tr><td data-sort="[\d.]+">(\w+)</td>', first_table)
    assert labels == ["byol", "simclr"]

    screenshot = tmp_path / "shot.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1200,2000", page.as_uri())
    with Image.open(screenshot) as image:
        assert image.size == (1200, 2000)
        assert max(ImageStat.Stat(image.convert("L")).var) > 0
