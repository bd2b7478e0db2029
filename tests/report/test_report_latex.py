"""``sslbench report --format latex`` fits a page: the study's table (10 rows × 5 pipelines,
2 seeds) compiles within an article's text width, with and without the study's values;
accuracy cells hold accuracy only (time and memory have their own table).

The compile test needs a LaTeX engine with booktabs (Debian: texlive-latex-base and
texlive-latex-recommended; `make latex`) and is skipped without one; the estimate of the
widths below needs nothing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_run, report

ENGINE = next((e for e in ("pdflatex", "lualatex") if shutil.which(e)), None)
LATEX_TIMEOUT_S = 120
#: \textwidth of \documentclass{article} (10 pt, letter or A4 paper), in points.
TEXT_WIDTH_PT = 345.0
PIPELINES = ("baseline", "simclr", "orthogonality", "lorot", "dcl")
ROWS = [(m, None) for m in ("simclr", "simsiam", "swav", "byol", "barlowtwins", "vicreg")]
ROWS += [("vicregl", a) for a in (0.25, 0.5, 0.75, 0.95)]
STUDY = {"dataset": "imagenette2", "backbone": "resnet18", "image_size": 224, "epochs": 200,
         "batch_size": 256, "test_count": 3925}  # fmt: skip


def study_grid(root: Path, variants: bool = False) -> Path:
    """The study's grid as sslbench leaves it: 10 rows × 5 pipelines × 2 seeds, named as
    run folders are (method-pipeline-dataset-backbone-hash), and one failed third seed;
    with ``variants``, SimCLR also at another temperature (rows with long labels)."""
    for row, (method, alpha) in enumerate(ROWS):
        for column, transform in enumerate(PIPELINES):
            for seed in (0, 1):
                name = f"{method}-{transform}-imagenette2-resnet18-{seed}"
                suffix = hashlib.sha256(f"{name}{alpha}".encode()).hexdigest()[:10]
                make_run(
                    root, f"{name[:-2]}-{suffix}", method=method, alpha=alpha,
                    transform=transform, seed=seed, top1=0.55 + 0.013 * row + 0.007 * column
                    + 0.011 * seed, top5=0.9, knn=0.5 + 0.01 * row, seconds=7000.0 + 60 * row,
                    gpu_bytes=11.2e9 + 1e8 * column, **STUDY,
                )  # fmt: skip
    for transform in PIPELINES if variants else ():
        make_run(root, f"simclr-{transform}-imagenette2-resnet18-t01", transform=transform,
                 top1=0.5, method_extra={"temperature": 0.1}, **STUDY)  # fmt: skip
    make_run(root, "vicregl-dcl-imagenette2-resnet18-0a1b2c3d4e", method="vicregl",
             alpha=0.75, transform="dcl", seed=2, status="failed",
             error="CUDA out of memory. Tried to allocate 2.00 GiB", **STUDY)  # fmt: skip
    return root


def latex(capsys, root: Path, reference: str | None) -> str:
    report([root], "latex", reference=reference)
    return capsys.readouterr().out


def tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(caption, rows of cell sources: the header first) of every tabular."""
    found = []
    for block in re.findall(r"\\begin\{table\}.*?\\end\{table\}", text, flags=re.S):
        caption = re.search(r"\\caption\{(.*)\}", block)
        body = block.split("\\toprule\n", 1)[1].split("\\bottomrule", 1)[0]
        lines = [line for line in body.splitlines() if line.endswith("\\\\")]
        rows = [[cell.strip() for cell in line[:-2].split(" & ")] for line in lines]
        found.append((caption[1] if caption else "", rows))
    return found


def visible_width_pt(source: str) -> float:
    """A generous estimate of a cell's width at \\footnotesize, in Computer Modern at 8 pt
    (digits 4.25 pt wide, bold 4.8 pt; at 6 pt, 3.2 pt; lower-case letters narrower): 4.3
    pt a character, 4.8 bold, 3.3 in superscripts, subscripts and the \\scriptsize spread
    (its ± and the thin space before it: 8)."""
    width = 0.0
    for pattern, size, extra in (
        (r"\\textsuperscript\{([^}]*)\}", 3.3, 0.0),
        (r"\\textsubscript\{([^}]*)\}", 3.3, 0.0),
        (r"\\,\{\\scriptsize\$\\pm\$([^}]*)\}", 3.3, 8.0),
        (r"\\textbf\{([^}]*)\}", 4.8, 0.0),
    ):
        for match in re.finditer(pattern, source):
            width += size * len(match[1]) + extra
        source = re.sub(pattern, "", source)
    source = re.sub(r"\\quad\b", "mm", source)
    source = re.sub(r"\$\\alpha\$", "a", source)
    source = re.sub(r"\\[a-zA-Z]+|[{}$]", "", source)
    return width + 4.3 * len(source.strip())


def estimated_table_width_pt(rows: list[list[str]], first_column_pt: float | None) -> float:
    columns = list(zip(*rows, strict=True))
    widths = [max(visible_width_pt(c) for c in column) for column in columns]
    if first_column_pt is not None:
        widths[0] = first_column_pt
    return sum(widths) + 2 * 3.0 * len(widths)  # \tabcolsep 3pt on each side


@pytest.mark.parametrize("reference", [None, "study"])
def test_accuracy_cells_hold_accuracy_only_and_the_study_table_fits_by_estimate(
    tmp_path, capsys, reference
):
    text = latex(capsys, study_grid(tmp_path), reference)
    found = tables(text)
    accuracy = [(c, rows) for c, rows in found if c.startswith(("Linear", "kNN"))]
    assert len(accuracy) == 3  # top-1, top-5, kNN
    for caption, rows in accuracy:
        study_rows = 3 if reference and caption.startswith("Linear top-1") else 1
        assert len(rows) == 1 + len(ROWS) * study_rows
        assert len(rows[0]) == 1 + len(PIPELINES)
        for row in rows[1:]:
            for cell in row[1:]:
                assert not re.search(r"\bmin\b|GB", cell), (caption, cell)
        wrap = "p{7.5em}" in text.split(caption, 1)[1].split("\\toprule", 1)[0]
        width = estimated_table_width_pt(rows, 7.5 * 8 if wrap else None)
        assert width <= TEXT_WIDTH_PT, (caption, width)
    cost = [rows for c, rows in found if c.startswith("Pretraining minutes")]
    assert len(cost) == 1 and re.fullmatch(r"\d+\.\d / \d+\.\d", cost[0][1][1])


def compile_latex(body: str, folder: Path) -> str:
    """Compile ``body`` (\\input into an article) with the engine; return the log."""
    (folder / "report.tex").write_text(body)
    (folder / "main.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        "\\begin{document}\n\\input{report}\n\\end{document}\n"
    )
    assert ENGINE is not None
    done = subprocess.run(
        [ENGINE, "-interaction=nonstopmode", "-halt-on-error", "main.tex"],
        cwd=folder, capture_output=True, text=True, timeout=LATEX_TIMEOUT_S,
    )  # fmt: skip
    log = (folder / "main.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    return log


@pytest.mark.skipif(ENGINE is None, reason="no LaTeX engine (make latex installs texlive)")
@pytest.mark.parametrize(
    ("reference", "variants"), [(None, False), ("study", False), ("study", True)]
)
def test_the_study_table_compiles_within_the_text_width(tmp_path, capsys, reference, variants):
    runs = study_grid(tmp_path / "runs", variants)
    build = tmp_path / "build"
    build.mkdir()
    log = compile_latex(latex(capsys, runs, reference), build)
    overfull = [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]
    assert not overfull, overfull
    assert "Float too large" not in log
    assert re.search(r"Output written on main\.pdf \((\d+) pages?", log)
