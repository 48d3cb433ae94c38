"""Print, or write into the notebook, the parameters cell as `uni_seg.config.PARAMETERS` declares it.

    python tools/parameters_cell.py            # print the cell's source
    python tools/parameters_cell.py --write    # replace the notebook's parameters cell, then: make sync

papermill reads the parameters cell as text, so it holds literal assignments that cannot be made
at run time; `PARAMETERS` (notebook §0) is where a parameter is declared, and this writes the cell
from it (`uni_seg.config.parameters_cell`). To add or change a parameter: edit its row in the
table, run `make sync` (so that `uni_seg.config` has the new table), then this with `--write`,
then `make sync` again. tests/test_config.py fails while the cell and the table disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "cell_instance_segmentation.ipynb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help=f"replace the parameters cell of {NOTEBOOK.name} (its id and tags are kept)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from uni_seg.config import parameters_cell

    source = parameters_cell()
    if not args.write:
        print(source)
        return 0
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        print(f"{NOTEBOOK.name}: {len(cells)} cells tagged 'parameters', expected one", file=sys.stderr)
        return 1
    if cells[0].source == source:
        print(f"{NOTEBOOK.name}: the parameters cell already is the table")
        return 0
    cells[0].source = source
    nbformat.write(nb, NOTEBOOK)
    print(f"{NOTEBOOK.name}: parameters cell rewritten from uni_seg.config.PARAMETERS; now run `make sync`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
