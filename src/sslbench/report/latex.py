"""The report as LaTeX: booktabs tables that fit a page's text width, to ``\\input``.

What makes them fit: an accuracy cell holds the mean and, in a smaller size, its spread
without the leading zero (0.684 ±.012); time and memory have their own tables; the
number of runs per cell is said once under the table, and marked only on cells that
differ from it; the reference's values and the differences (``--reference``) are rows
under each method instead of two more columns per pipeline; long row labels wrap; a rule
sets the reference rows (supervised, random init) apart.
tests/report/test_report_latex.py compiles a 10-method × 5-pipeline study table with pdflatex
and checks that no line is overfull.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from sslbench.report.model import Cell, Report, Section, Table, summary
from sslbench.report.plots import Plot

_LATEX_CHARS = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "%": r"\%",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "±": r"$\pm$",
    "α": r"$\alpha$",
    "Δ": r"$\Delta$",
    "…": r"\dots{}",
}
#: Row labels longer than this wrap in a column of LABEL_WIDTH.
LABEL_WRAP_CHARS = 24
LABEL_WIDTH = "7.5em"
#: The table's type size and the space between columns (LaTeX's default is 6pt).
TABLE_SIZE = r"\footnotesize"
TABCOLSEP = "3pt"


def latex_escape(text: str) -> str:
    """Text typeset as itself: LaTeX's special characters escaped, α ± Δ – as math/dashes."""
    return "".join(_LATEX_CHARS.get(char, char) for char in " ".join(text.split()))


def _common_n(table: Table) -> int | None:
    """The number of runs most cells average (said once under the table)."""
    counts = Counter(c.n for row in table.rows for c in row[1:] if c.n is not None)
    return counts.most_common(1)[0][0] if counts else None


def _cell(cell: Cell, common_n: int | None) -> str:
    text = latex_escape(cell.text)
    if cell.best:
        text = rf"\textbf{{{text}}}"
    if cell.spread is not None:  # a fraction below 1: ".012", as papers print it
        spread = cell.spread[1:] if cell.spread.startswith("0.") else cell.spread
        text += r"\,{\scriptsize$\pm$" + latex_escape(spread) + "}"
    if cell.n is not None and cell.n != common_n:
        text += rf"\textsubscript{{n={cell.n}}}"
    if cell.detail:
        text += f" ({latex_escape(cell.detail)})"
    if cell.notes:
        text += r"\textsuperscript{" + ",".join(str(n) for n in cell.notes) + "}"
    return text


def _label(cell: Cell, wrap: bool, sub: bool = False) -> str:
    text = (r"\quad " if sub else "") + _cell(cell, None)
    if not wrap:
        return text
    # a config key and its value are one word to TeX: let it break after = , / and a key's .
    text = re.sub(r"(?<=[=,/])(?=\S)|(?<=[A-Za-z]\.)(?=[A-Za-z])", r"\\allowbreak{}", text)
    # ragged right for the cell's paragraph, \\ still ending the row (no \par: a p cell
    # ending in one grows a line)
    return r"\raggedright\let\\\tabularnewline " + text


def _rows(table: Table, wrap: bool, common_n: int | None) -> list[str]:
    """The body: one line per row; with a reference's columns (table.group > 1) its values,
    and the differences, on lines under each method's; a rule above the reference rows
    (supervised, random init), which no reference publishes: they get no such lines."""
    lines = []
    group = table.group
    names = ["", table.reference or "", "Δ"]
    for index, row in enumerate(table.rows):
        bound = table.first_bound is not None and index >= table.first_bound
        if index and index == table.first_bound:
            lines.append(r"\midrule")
        elif group > 1 and index and not bound:
            lines.append(r"\addlinespace[2pt]")
        for offset in range(1 if bound else group):
            if offset == 0:
                label = _label(row[0], wrap)
            else:
                label = _label(Cell(text=names[offset]), wrap, sub=True)
            cells = [_cell(c, common_n) for c in row[1 + offset :: group]]
            lines.append(" & ".join([label, *cells]) + r" \\")
    return lines


def _table(table: Table, section: Section) -> list[str]:
    caption = latex_escape(f"{table.title}: {section.heading}")
    label = re.sub(r"[^A-Za-z0-9-]", "-", f"tab:sslbench-{section.slug}-{table.kind}")
    header = [table.header[0], *table.header[1 :: table.group]]
    wrap = any(len(row[0].text) > LABEL_WRAP_CHARS for row in table.rows)
    first = f"p{{{LABEL_WIDTH}}}" if wrap else "l"
    common_n = _common_n(table) if table.accuracy else None
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        TABLE_SIZE,
        rf"\setlength{{\tabcolsep}}{{{TABCOLSEP}}}",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{" + first + "r" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
        *_rows(table, wrap, common_n),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    remarks = []
    if table.accuracy:
        marked = any(c.n is not None and c.n != common_n for row in table.rows for c in row[1:])
        if common_n is not None and common_n > 1:
            text = f"Mean ± sample standard deviation over n={common_n} runs (seeds) per cell"
            text += " (n=… marks a cell of another count)" if marked else ""
        else:
            text = "One run per cell"
            text += " (n=…: the mean ± sample standard deviation of n runs)" if marked else ""
        remarks.append(text + "; bold: the best of its column.")
    owner = table.reference_owner
    if table.group == 3:
        remarks.append(f"Under each method: {owner} value, and Δ = yours − {owner}.")
    if table.group == 2:
        remarks.append(f"Under each method: {owner} value.")
    numbers = sorted({n for row in table.rows for c in row for n in c.notes})
    texts = dict(section.footnotes)
    notes = [rf"\textsuperscript{{{n}}}~{latex_escape(texts[n])}\par" for n in numbers]
    notes.extend(latex_escape(r) + r"\par" for r in [*remarks, *table.remarks])
    lines.extend([r"\par\smallskip", r"{\footnotesize\raggedright", *notes, "}"])
    lines.append(r"\end{table}")
    return lines


def to_latex(report: Report, plots: Sequence[Plot] = ()) -> str:
    """booktabs tables (and figures when plot files were written), to \\input."""
    lines = [
        "% sslbench report: needs \\usepackage{booktabs} (and graphicx for the figures)",
        f"% {summary(report)}",
    ]
    lines.extend(f"% {text}" for text in [*report.notices, *report.legend])
    for section in report.sections:
        lines.extend(["", f"% {section.heading}"])
        for table in section.tables:
            lines.extend(_table(table, section))
        for plot in plots:
            if plot.slug == section.slug and plot.file:
                lines.extend(
                    [
                        r"\begin{figure}[htbp]",
                        r"\centering",
                        rf"\includegraphics[width=\linewidth]{{{plot.file}}}",
                        rf"\caption{{{latex_escape(plot.title)}}}",
                        r"\end{figure}",
                    ]
                )
    return "\n".join(lines) + "\n"
