"""`uni_seg.procs`: worker processes of a script are forked, so an unguarded script runs once; CPU
workers end when the process that started them is killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent



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


# ---------------------------------------------------------------- CPU workers end with their parent
# Issue 16, faults met trying the project as a new user: no process outlives a killed run.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a FIFO opened read-write: Linux")
def test_cpu_workers_end_when_their_parent_is_killed(tmp_path, read_pids):
    """A forkserver's workers are its children and keep it alive: they must watch the process
    that made the pool, or a killed run leaves them (and the forkserver) running."""
    psutil = pytest.importorskip("psutil")
    # each worker announces its pid once it holds its task: the kill comes after both did, not after a clock
    fifo = tmp_path / "workers.fifo"
    os.mkfifo(fifo)
    (tmp_path / "holder.py").write_text("import os, threading\n"
                                        "def hold(fifo):\n"
                                        "    with open(fifo, 'a') as handle:\n"
                                        "        handle.write(f'{os.getpid()}\\n')\n"
                                        "    threading.Event().wait()\n")
    script = ("import sys, threading\n"
              "from uni_seg.procs import WorkerPool\n"
              "from holder import hold\n"
              "if __name__ == '__main__':\n"
              "    pool = WorkerPool(2)\n"
              f"    busy = [pool.submit(hold, {str(fifo)!r}) for _ in range(2)]\n"
              "    print('started', flush=True)\n"
              "    threading.Event().wait()\n")
    (tmp_path / "pool.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    parent = subprocess.Popen([sys.executable, str(tmp_path / "pool.py")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    descendants: list = []
    try:
        assert parent.stdout.readline().strip() == "started"
        workers = read_pids(fifo, set(), 2, exclude=parent.pid)
        assert len(workers) == 2, "the two workers did not start"
        descendants = psutil.Process(parent.pid).children(recursive=True)  # the forkserver and its two workers
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs(descendants, timeout=60)
        assert descendants and not alive, f"{len(alive)} of {len(descendants)} worker process(es) outlived the parent"
    finally:
        parent.kill()
        for process in descendants:
            if process.is_running():
                process.kill()
