"""`uni_seg.procs`: worker processes of a script are forked, so an unguarded script runs once."""
from __future__ import annotations

import subprocess
import sys

import pytest



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the script default on Linux only")
def test_workers_in_a_script_are_forked_so_an_unguarded_script_runs_once(cache, tmp_path):
    """Also after OpenCV's thread pool ran in the parent: a child forked while its threads
    sleep used to hang in the worker init's cv2.setNumThreads."""
    script = tmp_path / "unguarded.py"
    script.write_text(f"""
import os, sys, threading
import cv2, numpy as np
from uni_seg.dataset import CellCropDataset, make_loader
from uni_seg.procs import worker_context
print("script started", worker_context().get_start_method(), flush=True)
cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.uint8), (31, 31), 5)  # a parallel call: OpenCV's pool starts
def others_running():  # any thread but this one in state R (running), as /proc/self/task/*/stat says
    me = str(threading.get_native_id())
    return any(open(f"/proc/self/task/{{t}}/stat").read().rsplit(")", 1)[1].split()[0] == "R"
               for t in os.listdir("/proc/self/task") if t != me)
while others_running():  # ... and its threads go to sleep: the fork below comes once they all do, not after a clock
    os.sched_yield()
ds = CellCropDataset({str(cache)!r}, "train", 64, train=True, crops_per_image=2, seed=1)
loader = make_loader(ds, batch_size=2, shuffle=True, num_workers=2, seed=0)
print("batches", len(list(loader)), flush=True)
""")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # asked in the script: this test process may have imported ipykernel (another test did), which a script has not
    assert run.stdout.count("script started fork") == 1 and "batches 4" in run.stdout
