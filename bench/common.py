"""What every benchmark shares: one timer, and where the real BCCD subset lives.

Benchmarks import it as `common` (a script's own folder is on `sys.path`); the tests' skip
helper (`tests/real_subset.py`) uses the same lookup. Not generated from the notebook: it is
tooling around the library, not part of it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Where the subset sits relative to the folder that holds the checkout.
RELATIVE = Path("shared/data/bccd_subset")


def timed(fn: Callable[[], Any], repeat: int = 1, warmup: int = 0, stat: str = "min", clock: str = "wall",
          sync: Callable[[], None] | None = None) -> tuple[Any, float]:
    """(the last result of `fn()`, its seconds): the minimum (default) or median over `repeat`
    runs after `warmup` unmeasured ones.

    The minimum is the default because on a shared machine other processes only ever add time.
    `clock="cpu"` measures this process's CPU time instead of wall time (with one thread: the
    single-core compute cost, whatever else shares the cores). `sync` (e.g.
    `torch.cuda.synchronize`) runs before and after each measured call, so asynchronous device
    work is inside the measurement.
    """
    if stat not in ("min", "median") or clock not in ("wall", "cpu"):
        raise ValueError(f"stat={stat!r} must be 'min' or 'median', clock={clock!r} 'wall' or 'cpu'")
    now = time.process_time if clock == "cpu" else time.perf_counter
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, repeat)):
        if sync:
            sync()
        start = now()
        out = fn()
        if sync:
            sync()
        times.append(now() - start)
    return out, (min(times) if stat == "min" else statistics.median(times))


def median_ms(fn: Callable[[Any], Any], items: list[Any], repeat: int = 1) -> float:
    """Median over `items` of the best-of-`repeat` wall time of `fn(item)`, in milliseconds."""
    return 1000 * statistics.median(timed(lambda: fn(item), repeat)[1] for item in items)


def format_ms(seconds: list[float]) -> str:
    """'  123 ms (min 110)': the median of several timings, and their minimum."""
    return f"{1000 * statistics.median(seconds):7.0f} ms" + (f" (min {1000 * min(seconds):.0f})" if len(seconds) > 1 else "")


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
