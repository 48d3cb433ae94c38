"""`python -m uni_seg.train ...` with a kill point, for the kill tests of tests/test_train.py.

Run as `python tests/train_kill_point.py --spec ... --no-progress` with `KILL_AT_SAVE=N` and
`KILL_POINT=mid|after`: at the N-th write of the latest checkpoint in this process (counted from
1), `mid` writes the first half of the checkpoint's bytes into its temporary file (a write cut
short), `after` completes the write (the file is in place); either then prints the line
`KILL POINT <point> <N>` and blocks until the test SIGKILLs it. The test reads that line from
stdout: the kill lands at a known step, never after a clock. Without KILL_AT_SAVE it is plain
`uni_seg.train`.

A plain script, not a fixture: it is the program a subprocess runs.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import torch

from uni_seg import files as files_mod
from uni_seg import engine, train

kill_at = int(os.environ.get("KILL_AT_SAVE", "0"))
point = os.environ.get("KILL_POINT", "mid")
if point not in ("mid", "after"):
    raise SystemExit(f"KILL_POINT={point!r}: expected 'mid' or 'after'")
latest_saves = 0
plain_save = engine.atomic_torch_save


def save_with_kill_point(obj, path) -> None:
    global latest_saves
    if not Path(path).name.startswith("latest_"):
        return plain_save(obj, path)
    latest_saves += 1
    if latest_saves != kill_at:
        return plain_save(obj, path)
    if point == "mid":
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getvalue()
        writing = files_mod.atomic_open(path, "wb")  # held open (never exits): the kill cuts it short
        handle = writing.__enter__()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    else:
        plain_save(obj, path)
    print(f"KILL POINT {point} {latest_saves}", flush=True)
    threading.Event().wait()  # until SIGKILL (`writing` stays referenced, so its file stays open)


engine.atomic_torch_save = save_with_kill_point
train.main(sys.argv[1:])
