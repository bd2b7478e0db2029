"""``sslbench report``: tables and plots from any set of run folders.

    sslbench report DIR... [--format md|csv|html|latex|json] [--out FILE]
                           [--reference study|lightly]

The steps: ``collect`` (with ``files``) finds and checks run folders (hostile input: bad
ones are skipped with a warning); ``scoring`` says which folders hold one run and which
numbers were scored alike; ``tables`` decides which runs may be compared and averaged
and builds the tables of ``model`` (cells in ``cells``, time and memory in ``costs``);
``bounds`` adds the reference rows (supervised, random init; ``random_init`` reads a run's
block); ``reference`` is what ``--reference`` puts beside our numbers (``study_reference``,
``lightly_reference``); ``plots`` draws the figures (loss curves from ``curves``);
``render`` (LaTeX in ``latex``) writes the chosen format. With ``--out FILE`` the report
and its plots (``<stem>_<section>_<plot>.png`` and ``.svg`` beside FILE) are written atomically;
otherwise the report goes to standard output, and only the HTML page (which embeds
them) draws plots. No torch here: a report is quick and runs where no training happens.
See docs/report.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sslbench.errors import one_line
from sslbench.report.collect import load_runs
from sslbench.report.lightly_reference import LightlyReference
from sslbench.report.reference import Reference
from sslbench.report.render import FORMATS, render
from sslbench.report.study_reference import StudyReference
from sslbench.report.tables import build_report
from sslbench.run.results import atomic_write_bytes, atomic_write_text

#: ``--reference`` NAME -> the published numbers it puts beside ours.
REFERENCES: dict[str, Reference] = {ref.name: ref for ref in (StudyReference(), LightlyReference())}


def _warn(message: str) -> None:
    print(f"sslbench report: {one_line(message, 400)}", file=sys.stderr)


def run_report(args: argparse.Namespace) -> int:
    """Build the report that ``args`` asks for; return the exit status (0).

    ``args``: ``dirs`` (folders to search), ``format`` (md|csv|html|latex|json), ``out``
    (a file, or None for standard output), ``reference`` (None or a name in REFERENCES).
    Raises FileNotFoundError / ValueError with a one-line message on bad input."""
    fmt = getattr(args, "format", "md") or "md"
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    name = getattr(args, "reference", None)
    if name is not None and name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; valid: {', '.join(REFERENCES)}")
    out = Path(args.out) if getattr(args, "out", None) else None
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name")
    dirs = list(args.dirs)
    runs, skipped = load_runs(dirs, _warn)
    if not runs:
        where = ", ".join(dirs)
        if skipped:
            raise ValueError(
                f"no readable run folder under {where}: {skipped} skipped (see the warnings)"
            )
        raise FileNotFoundError(f"no run folder (a folder holding results.json) under {where}")

    reference = None if name is None else REFERENCES[name]
    report = build_report(runs, reference=reference, n_skipped=skipped)
    for notice in report.notices:  # folders holding one run: said here and in the report
        _warn(notice)
    plots = []
    if out is not None or fmt == "html":
        from sslbench.report.plots import make_plots  # matplotlib only now

        plots = make_plots(report, _warn)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        for plot in plots:
            stem = plot.file_stem(out.stem)
            atomic_write_bytes(out.parent / f"{stem}.png", plot.png)
            atomic_write_text(out.parent / f"{stem}.svg", plot.svg)
            plot.file = f"{stem}.png"
    text = render(fmt, report, plots)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(out, text)
        extra = f" and {2 * len(plots)} plot files beside it" if plots else ""
        print(f"wrote {out}{extra}")
    return 0


__all__ = ["REFERENCES", "run_report"]
