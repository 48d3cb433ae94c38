"""Where the 100 real BCCD image/mask pairs live, for the tests about real files.

The subset is never committed; it sits beside the checkout as `../shared/data/bccd_subset`.
The lookup is the benchmarks' (`bench/common.py`): a fresh clone made elsewhere (CI clones into
a temporary folder) looks beside the repository it was cloned from, and `BCCD_SUBSET=/path`
names another place. Tests that need it skip, naming the places they looked, when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import candidate_dirs, find_real_subset

REAL_SUBSET = find_real_subset()


def require_real_subset() -> Path:
    """The subset's folder; skips the calling test, saying where it looked, when absent."""
    if REAL_SUBSET is None:
        pytest.skip("real BCCD subset absent (looked in "
                    + ", ".join(str(d) for d in candidate_dirs()) + "; set BCCD_SUBSET to its folder)")
    return REAL_SUBSET
