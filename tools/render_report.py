"""Render an executed notebook as the two HTML reports, with the run's summary on top.

    python tools/render_report.py EXECUTED.ipynb REPORT_DIR RUN_NAME

Writes REPORT_DIR/RUN_NAME.html (with code, for developers) and RUN_NAME.no-code.html (the story
and the outputs, for reviewers: the library's export cells and the one-line notes about them,
tagged `why`, are left out of it). A copy of the cell tagged `summary` (the run at a glance:
data, split, backbone and weights, headline metrics, figures) goes right after the notebook's
title, so a reviewer reads it first. When the run failed, a red banner naming the section and
cell that failed, and the error, takes its place.
"""

from __future__ import annotations

import argparse
import copy
import html
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

SUMMARY_TAG = "summary"  # uni_seg.report.SUMMARY_TAG (not imported: rendering needs no torch)
#: Left out of the reviewers' report: the library's code and the notes that explain it.
DEVELOPER_TAGS = ("export", "why")


def _failure(nb) -> tuple[int, str, str] | None:
    """(cell index, section heading above it, error line) of the cell papermill stopped at, or None."""
    section = ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            section = cell.source.splitlines()[0].lstrip("# ").strip()
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return index, section, f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"[:500]
    return None


def _banner_cell(text: str):
    box = ('<div style="border:2px solid #c0392b;background:#fdecea;padding:8px 12px;margin:8px 0;'
           f'border-radius:4px"><b>RUN FAILED</b>: {html.escape(text)}</div>')
    return nbformat.v4.new_markdown_cell(box)


def with_summary_on_top(nb):
    """A copy of `nb` with the summary cell (or a failure banner) right after the title."""
    nb = copy.deepcopy(nb)
    position = 1
    failure = _failure(nb)
    summary = next((c for c in nb.cells if SUMMARY_TAG in c.metadata.get("tags", []) and c.get("outputs")), None)
    if failure is not None:
        index, section, error = failure
        top = _banner_cell(f"the run stopped in section \"{section}\" (cell {index}): {error}. "
                           "The cell and its traceback are further down; results below it are missing.")
    elif summary is not None:
        top = copy.deepcopy(summary)
        top["id"] = f"{summary.get('id', 'summary')}-top"
        top.metadata.setdefault("tags", []).append("summary-copy")
    else:
        return nb
    nb.cells.insert(position, top)
    return nb


def render(executed: Path, report_dir: Path, run_name: str) -> list[Path]:
    """Write both HTML reports of `executed` into `report_dir`; returns their paths."""
    nb = with_summary_on_top(nbformat.read(executed, as_version=4))
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, for_reviewers in (("", False), (".no-code", True)):
        exporter = HTMLExporter(exclude_input=for_reviewers, exclude_input_prompt=for_reviewers,
                                exclude_output_prompt=for_reviewers)
        shown = copy.deepcopy(nb)
        if for_reviewers:
            shown.cells = [c for c in shown.cells if not set(DEVELOPER_TAGS) & set(c.metadata.get("tags", []))]
        body, _ = exporter.from_notebook_node(shown, resources={"metadata": {"name": run_name}})
        path = report_dir / f"{run_name}{suffix}.html"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a report
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("executed", type=Path, help="the executed notebook (papermill's output)")
    parser.add_argument("report_dir", type=Path, help="folder for the HTML reports")
    parser.add_argument("run_name", help="name of the run (file names and page title)")
    args = parser.parse_args(argv)
    if not args.executed.is_file():
        print(f"render_report: {args.executed} does not exist", file=sys.stderr)
        return 2
    for path in render(args.executed, args.report_dir, args.run_name):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
