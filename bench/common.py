"""What every benchmark shares: one timer, a run folder's best checkpoint, and where the real BCCD subset lives.

Benchmarks import it as `common` (a script's own folder is on `sys.path`); the tests' skip
helper (`tests/real_subset.py`) holds the lookup, and this module takes it from there. Not generated from the notebook: it is
tooling around the library, not part of it.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


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


def run_checkpoint(run: Path) -> Path:
    """The best checkpoint of a run folder (a notebook run or one run of `uni-seg sweep`):
    checkpoints/best_phase2.pth, else best_phase1.pth; exits naming the folder when it has neither."""
    for name in ("best_phase2.pth", "best_phase1.pth"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    raise SystemExit(f"{run}: no checkpoints/best_phase2.pth or best_phase1.pth")


# The real subset's lookup lives on the test side (tests/real_subset.py), which the skip
# fixtures of the tests use; the benchmarks share it from there.
sys.path.insert(0, str(ROOT / "tests"))
from real_subset import RELATIVE, candidate_dirs, find_real_subset  # noqa: E402,F401
