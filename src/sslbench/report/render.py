"""The report as text: Markdown, CSV, HTML, LaTeX or JSON, from the model in tables.py.

Every string that came from a run folder is escaped for the format it lands in (Markdown
table syntax, HTML, LaTeX's special characters); the HTML page is one self-contained file
whose Content-Security-Policy forbids loading anything (plots are data: URIs, the sorting
script is inline). Nothing here reads a file or the clock: the same runs give the same
bytes.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from sslbench.report.latex import to_latex
from sslbench.report.model import Cell, Report, Section, Table, summary
from sslbench.report.plots import Plot

FORMATS = ("md", "csv", "html", "latex", "json")

CSV_COLUMNS = (
    "dataset", "backbone", "epochs", "image_size", "batch_size", "test_subset", "method",
    "alpha", "pretext", "variant", "transform", "n_runs", "n_failed", "n_interrupted",
    "linear_top1_mean", "linear_top1_std", "linear_top5_mean", "linear_top5_std",
    "knn_top1_mean", "knn_top1_std", "pretext_accuracy_mean", "pretext_accuracy_std",
    "linear_top1_1pct_mean", "linear_top1_1pct_std", "linear_top1_10pct_mean",
    "linear_top1_10pct_std", "finetune_top1_mean", "finetune_top1_std",
    "online_probe_top1_mean", "online_probe_top1_std",
    "minutes_mean", "peak_gpu_gb_mean", "peak_host_gb_mean",
    "images_per_second_mean", "study_top1", "study_top5", "diff", "study_note", "status",
    "error", "run_folders",
    # added with per-protocol fields (results.json schema 3): after the first columns, so
    # that a reader of those by position still finds them
    "sgd_linear_top1_mean", "sgd_linear_top1_std", "scoring", "pretext_chance", "caveats",
    # added with --reference lightly and the reference rows: "bound" is "supervised" or
    # "random_init" for those rows; reference_* hold whichever --reference was given
    "bound", "reference", "reference_metric", "reference_value", "reference_diff",
    "reference_minutes", "reference_peak_gpu_gb", "reference_note",
)  # fmt: skip


def render(fmt: str, report: Report, plots: Sequence[Plot] = ()) -> str:
    """The report in ``fmt``; ``plots`` are embedded (html) or linked by file (md, latex)."""
    renderers: dict[str, Callable[[Report, Sequence[Plot]], str]] = {
        "md": to_markdown,
        "csv": lambda r, _: to_csv(r),
        "html": to_html,
        "latex": to_latex,
        "json": lambda r, _: to_json(r),
    }
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return renderers[fmt](report, plots)


def _plots_of(section: Section, plots: Sequence[Plot]) -> list[Plot]:
    return [p for p in plots if p.slug == section.slug]


def _first_use(report: Report) -> dict[int, str]:
    """The slug of the section where each footnote is first used (where it is printed)."""
    where: dict[int, str] = {}
    for section in report.sections:
        for number, _ in section.footnotes:
            where.setdefault(number, section.slug)
    return where


# --- Markdown ------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def md_escape(text: str) -> str:
    """Text that stays text in a GitHub Markdown table cell."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _md_cell(cell: Cell) -> str:
    text = md_escape(cell.text if cell.spread is None else f"{cell.text} ± {cell.spread}")
    if cell.best:
        text = f"**{text}**"
    if cell.details():
        text += f" ({md_escape('; '.join(cell.details()))})"
    return text + "".join(f"[^{n}]" for n in cell.notes)


def _md_table(table: Table) -> list[str]:
    lines = [f"### {md_escape(table.title)}", ""]
    lines.append("| " + " | ".join(md_escape(h) for h in table.header) + " |")
    lines.append("|" + "|".join([":--", *["--:"] * (len(table.header) - 1)]) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows)
    lines.append("")
    for remark in table.remarks:
        lines.extend([md_escape(remark), ""])
    return lines


def to_markdown(report: Report, plots: Sequence[Plot] = ()) -> str:
    lines = ["# sslbench report", "", md_escape(summary(report)), ""]
    if report.notices:
        lines.extend([f"- {md_escape(text)}" for text in report.notices] + [""])
    lines.extend(md_escape(text) + "  " for text in report.legend)
    lines.append("")
    first_use = _first_use(report)
    for section in report.sections:
        lines.extend([f"## {md_escape(section.heading)}", ""])
        for table in section.tables:
            lines.extend(_md_table(table))
        section_plots = [p for p in _plots_of(section, plots) if p.file]
        if section_plots:
            lines.extend(["### Plots", ""])
            for plot in section_plots:
                lines.extend([f"![{md_escape(plot.title)}](<{plot.file}>)", ""])
        notes = [(n, t) for n, t in section.footnotes if first_use[n] == section.slug]
        for number, text in notes:
            lines.append(f"[^{number}]: {md_escape(text)}")
        if notes:
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# --- CSV and JSON --------------------------------------------------------------------------


def _records(report: Report) -> list[dict[str, Any]]:
    return [dict(record) for section in report.sections for record in section.records]


def _csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet will not run as a formula (run folders are hostile)."""
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def to_csv(report: Report) -> str:
    """Long form: one row per cell with runs (columns CSV_COLUMNS, then one mean and std
    per kNN setting other than the default that some run has)."""
    records = _records(report)
    extra = [k for r in records for k in r if k not in CSV_COLUMNS and k.startswith("knn_top1_k")]
    columns = [*CSV_COLUMNS, *dict.fromkeys(extra)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: _csv_safe(record.get(k)) for k in columns})
    return buffer.getvalue()


def to_json(report: Report) -> str:
    """The same cells as the CSV, grouped by section, plus the time-and-memory rows."""
    records = iter(_records(report))
    sections = []
    for section in report.sections:
        cost = next(t for t in section.tables if t.kind == "cost")
        key = section.key
        sections.append(
            {
                "heading": section.heading,
                "dataset": key.dataset,
                "backbone": key.backbone or None,
                "image_size": None if key.image_size < 0 else key.image_size,
                "epochs": None if key.epochs < 0 else key.epochs,
                "batch_size": None if key.batch_size < 0 else key.batch_size,
                "test_subset": {
                    "sha256": key.test_sha256 or None,
                    "count": None if key.test_count < 0 else key.test_count,
                },
                "remarks": list(
                    dict.fromkeys(r for t in section.tables if t.accuracy for r in t.remarks)
                ),
                "cells": [next(records) for _ in section.records],
                "methods": [
                    {
                        "method": row.method,
                        "alpha": row.alpha,
                        "variant": row.variant_label or None,
                        "label": row.label,
                        "bound": row.bound,
                        "n_completed": int(line[1].sort_value or 0),
                        "minutes_mean": line[2].sort_value,
                        "peak_gpu_gb_mean": line[3].sort_value,
                        "peak_host_gb_mean": line[4].sort_value,
                        "images_per_second_mean": line[5].sort_value,
                    }
                    for row, line in zip(section.rows, cost.rows, strict=True)
                ],
                "random_init": None
                if section.random_init is None
                else {
                    "scores": section.random_init.scores,
                    "from": section.random_init.source,
                    "n_runs": section.random_init.n_blocks,
                    "note": section.random_init.note,
                },
            }
        )
    document = {
        "sslbench_report": 1,
        "reference": report.reference,
        "n_runs": report.n_runs,
        "n_skipped": report.n_skipped,
        "n_duplicates": report.n_duplicates,
        "notices": report.notices,
        "sections": sections,
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --- HTML ----------------------------------------------------------------------------------

_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " ▲"; }
th[data-order="desc"]::after { content: " ▼"; }
td.best { background: #e6f4e6; }
tr.bound td { font-style: italic; }
.detail { color: #555; }
.remark, .legend { font-size: 0.9em; color: #444; }
figure { margin: 1em 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
"""

#: Sort a table by the clicked column (numbers by data-sort, empty cells always last), and
#: record how many images rendered (data-images-ok / data-images-total, for the tests).
_HTML_SCRIPT = """
(function () {
  function key(row, index) {
    var cell = row.cells[index];
    var value = cell ? cell.getAttribute("data-sort") : null;
    return value === null ? null : parseFloat(value);
  }
  document.querySelectorAll("table.sortable thead th").forEach(function (th) {
    th.addEventListener("click", function () {
      var table = th.closest("table");
      var body = table.tBodies[0];
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var ascending = th.getAttribute("data-order") !== "asc";
      th.parentNode.querySelectorAll("th").forEach(function (other) {
        other.removeAttribute("data-order");
      });
      th.setAttribute("data-order", ascending ? "asc" : "desc");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, index), y = key(b, index);
        if (x === null || isNaN(x)) { return (y === null || isNaN(y)) ? 0 : 1; }
        if (y === null || isNaN(y)) { return -1; }
        return ascending ? x - y : y - x;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  window.addEventListener("load", function () {
    var images = document.images, ok = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
    }
    document.body.dataset.imagesOk = String(ok);
    document.body.dataset.imagesTotal = String(images.length);
  });
})();
"""

_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _html_cell(cell: Cell, first_use: dict[int, str]) -> str:
    attributes = ""
    if cell.sort_value is not None:
        attributes += f' data-sort="{cell.sort_value!r}"'
    if cell.best:
        attributes += ' class="best"'
    text = _esc(cell.text if cell.spread is None else f"{cell.text} ± {cell.spread}")
    if cell.best:
        text = f"<strong>{text}</strong>"
    if cell.details():
        text += f' <span class="detail">({_esc("; ".join(cell.details()))})</span>'
    if cell.notes:
        links = ",".join(f'<a href="#note-{n}">{n}</a>' for n in cell.notes)
        text += f"<sup>{links}</sup>"
    return f"<td{attributes}>{text}</td>"


def _html_table(table: Table, first_use: dict[int, str]) -> list[str]:
    lines = [f"<h3>{_esc(table.title)}</h3>", '<table class="sortable">', "<thead><tr>"]
    lines.extend(f'<th scope="col" title="sort">{_esc(h)}</th>' for h in table.header)
    lines.extend(["</tr></thead>", "<tbody>"])
    for index, row in enumerate(table.rows):
        bound = table.first_bound is not None and index >= table.first_bound
        lines.append(
            ('<tr class="bound">' if bound else "<tr>")
            + "".join(_html_cell(c, first_use) for c in row)
            + "</tr>"
        )
    lines.extend(["</tbody>", "</table>"])
    lines.extend(f'<p class="remark">{_esc(r)}</p>' for r in table.remarks)
    return lines


def to_html(report: Report, plots: Sequence[Plot] = ()) -> str:
    """One self-contained page: tables sortable by a click on a header, plots inline."""
    first_use = _first_use(report)
    body = ["<h1>sslbench report</h1>", f'<p class="legend">{_esc(summary(report))}</p>']
    if report.notices:
        body.append('<ul class="notices">')
        body.extend(f"<li>{_esc(text)}</li>" for text in report.notices)
        body.append("</ul>")
    body.extend(f'<p class="legend">{_esc(text)}</p>' for text in report.legend)
    for section in report.sections:
        body.extend(["<section>", f"<h2>{_esc(section.heading)}</h2>"])
        for table in section.tables:
            body.extend(_html_table(table, first_use))
        section_plots = _plots_of(section, plots)
        if section_plots:
            body.append("<h3>Plots</h3>")
        for plot in section_plots:
            data = base64.b64encode(plot.png).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(plot.title)}">'
                f"<figcaption>{_esc(plot.title)}</figcaption></figure>"
            )
        notes = [(n, t) for n, t in section.footnotes if first_use[n] == section.slug]
        if notes:
            body.append('<ol class="notes">')
            body.extend(f'<li id="note-{n}" value="{n}">{_esc(t)}</li>' for n, t in notes)
            body.append("</ol>")
        body.append("</section>")
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>sslbench report</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
    ]
    tail = [f"<script>{_HTML_SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(head + body + tail) + "\n"
