"""Where the 100 real BCCD image/mask pairs and the BCCD detection set live, for the tests about real files.

The subset is never committed; it sits beside the checkout as `../shared/data/bccd_subset`.
A fresh clone made elsewhere (CI clones into a temporary folder) looks beside the repository it
was cloned from, and `BCCD_SUBSET=/path` names another place. Tests that need it take the
`real_subset` / `bccd_detection` fixtures (tests/conftest.py), which skip, naming the places they
looked, when it is absent.

A plain helper module, not only conftest.py: the benchmarks use the same lookup
(`bench/common.py` imports `candidate_dirs` and `find_real_subset` from here), and a benchmark
cannot take a pytest fixture. It imports pytest only where it skips, so benchmarks need no pytest.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where the subset sits relative to the folder that holds the checkout.
RELATIVE = Path("shared/data/bccd_subset")


def _origin_checkout(root: Path) -> Path | None:
    """The local folder `root` was cloned from, or None (no git, remote not a local path)."""
    try:
        url = subprocess.run(["git", "-C", str(root), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url.removeprefix("file://")) if url else None
    return path.resolve() if path is not None and path.is_dir() else None


def candidate_dirs(root: Path = ROOT) -> list[Path]:
    """Places to look for the real subset, in order: $BCCD_SUBSET, beside this checkout,
    beside the checkout it was cloned from (CI clones into a temporary folder)."""
    if os.environ.get("BCCD_SUBSET"):
        return [Path(os.environ["BCCD_SUBSET"])]
    places = [root.parent / RELATIVE]
    origin = _origin_checkout(root)
    if origin is not None:
        places.append(origin.parent / RELATIVE)
    return places


def find_real_subset(root: Path = ROOT) -> Path | None:
    """The first candidate holding a Kaggle-layout subset (train/mask present), else None."""
    return next((d for d in candidate_dirs(root) if (d / "train" / "mask").is_dir()), None)


REAL_SUBSET = find_real_subset()


def require_real_subset() -> Path:
    """The subset's folder; skips the calling test, saying where it looked, when absent."""
    if REAL_SUBSET is None:
        import pytest

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
        import pytest

        pytest.skip("BCCD detection set absent (looked in " + ", ".join(str(d) for d in bccd_detection_dirs())
                    + "; set BCCD_DETECTION to its folder)")
    return found
