"""Where the 100 real BCCD image/mask pairs and the BCCD detection set live, for the tests about real files.

The subset is never committed; it sits beside the checkout as `../shared/data/bccd_subset`.
The lookup is the benchmarks' (`bench/common.py`): a fresh clone made elsewhere (CI clones into
a temporary folder) looks beside the repository it was cloned from, and `BCCD_SUBSET=/path`
names another place. Tests that need it skip, naming the places they looked, when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import os

from bench.common import candidate_dirs, find_real_subset

REAL_SUBSET = find_real_subset()


def require_real_subset() -> Path:
    """The subset's folder; skips the calling test, saying where it looked, when absent."""
    if REAL_SUBSET is None:
        pytest.skip("real BCCD subset absent (looked in "
                    + ", ".join(str(d) for d in candidate_dirs()) + "; set BCCD_SUBSET to its folder)")
    return REAL_SUBSET


def bccd_detection_dirs() -> list[Path]:
    """Places of the BCCD detection set (292 images with VOC boxes): $BCCD_DETECTION, else beside
    each place the subset is looked for (`../shared/data/bccd_detection`)."""
    if os.environ.get("BCCD_DETECTION"):
        return [Path(os.environ["BCCD_DETECTION"])]
    return [d.parent / "bccd_detection" for d in candidate_dirs()]


def require_bccd_detection() -> Path:
    """The detection set's folder (JPEGImages/, Annotations/); skips the calling test, saying
    where it looked, when absent."""
    found = next((d for d in bccd_detection_dirs() if (d / "Annotations").is_dir()), None)
    if found is None:
        pytest.skip("BCCD detection set absent (looked in " + ", ".join(str(d) for d in bccd_detection_dirs())
                    + "; set BCCD_DETECTION to its folder)")
    return found
