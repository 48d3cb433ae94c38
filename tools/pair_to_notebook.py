"""Bring edits made in the jupytext pair (`cell_instance_segmentation.py`) back into the notebook.

    python tools/pair_to_notebook.py        # then: python tools/nbexport.py (or make sync)

The notebook stays the source of truth; this is the text editor's way into it, as Jupyter's own
jupytext pairing is the browser's. jupytext's `--update` gives every cell a new id, which would
break the back-links in `uni_seg/` and the table of contents, so the cells of the pair are aligned
with the notebook's here (difflib over the cells' sources): a cell that is unchanged, or edited in
place, keeps its id and metadata; a new cell gets a fresh id. Edit one side at a time: this
overwrites the notebook's cells with the pair's (git shows what changed).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "cell_instance_segmentation.ipynb"
PAIR = ROOT / "cell_instance_segmentation.py"


def _key(cell) -> tuple[str, str]:
    return cell.cell_type, cell.source.strip()


def merged_notebook(notebook, pair):
    """`pair`'s cells, carrying the ids and metadata of the notebook cells they align with."""
    old, new = notebook.cells, pair.cells
    matcher = difflib.SequenceMatcher(a=[_key(c) for c in old], b=[_key(c) for c in new], autojunk=False)
    cells = []
    for tag, i0, i1, j0, j1 in matcher.get_opcodes():
        for offset, cell in enumerate(new[j0:j1]):
            i = i0 + offset
            if tag in ("equal", "replace") and i < i1 and old[i].cell_type == cell.cell_type:
                kept = nbformat.from_dict(dict(old[i]))
                kept.source = cell.source
                # tags come from the pair (they are written there); display flags stay the notebook's
                kept.metadata = {**old[i].metadata, **cell.metadata}
                if "tags" not in cell.metadata:
                    kept.metadata.pop("tags", None)
                cells.append(kept)
            else:
                fresh = (nbformat.v4.new_code_cell if cell.cell_type == "code" else nbformat.v4.new_markdown_cell)(
                    cell.source, metadata=dict(cell.metadata))
                cells.append(fresh)
    merged = nbformat.from_dict(dict(notebook))
    merged.cells = cells
    return merged


def main() -> int:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    pair = jupytext.read(PAIR)
    if jupytext.read(NOTEBOOK).cells == pair.cells:
        print("pair_to_notebook: the notebook already holds the pair's cells")
        return 0
    nbformat.write(merged_notebook(notebook, pair), NOTEBOOK)
    print(f"pair_to_notebook: {NOTEBOOK.name} updated from {PAIR.name}; now run `make sync`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
