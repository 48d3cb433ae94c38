"""Folder inference as shards (uni_seg.shards, slurm_infer.sh): shards of one folder, merged, give
the same bytes (and run record) as one process; a shard killed half-way is finished with --resume;
two shards never write the same file; a plain run, a shard and a merge never write one folder at
once (the second writer is a process that holds the lock when the test goes on: it says so on a
pipe, no clock); the job array runs under a stand-in sbatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from stand_ins import EquivariantModel, disks_image

from uni_seg import predict as predict_mod
from uni_seg import infer, shards
from uni_seg.data import tile_starts
from uni_seg.files import LOCK_NAME, FolderInUse

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = predict_mod.InferenceSettings(tile_size=32, overlap=8, batch_size=8, device="cpu", precision="fp32")
#: run.json's fields that belong to one run as it was done: when it started and ended, how many
#: images it read back rather than segmented, its peak memory (per shard), how many shards.
PER_RUN_FIELDS = {"started", "finished", "resumed", "peak_rss_mb", "shards"}
#: A process that enters the context manager given as an expression, says so on stdout, and holds
#: it until its stdin is closed.
HOLDER = """
import sys
from pathlib import Path
from uni_seg import files, shards
with eval(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _holder(expression: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, expression], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"  # blocks until the child holds the lock
    return proc


def _write_folder(folder: Path, n: int = 8, broken: bool = True) -> None:
    folder.mkdir()
    for i in range(n):
        centres = [(25, 25), (60, 80)] if i % 2 else [(30, 30), (30, 80), (70, 55)]
        image, _ = disks_image((96, 112), centres, 13, seed=i)
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if broken:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        (folder / "notes.txt").write_text("not an image")
        (folder / "dir.png").mkdir()  # left out, with the reason


def _same_files(a: Path, b: Path) -> list[str]:
    """The files of `a` (but run.json and the shards' folder), checked byte-identical in `b`."""
    names = sorted(p.name for p in a.iterdir() if p.is_file() and p.name not in ("run.json", LOCK_NAME))
    assert names == sorted(p.name for p in b.iterdir() if p.is_file() and p.name not in ("run.json", LOCK_NAME))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


def test_parse_shard_and_the_split_is_every_nth_of_the_sorted_list():
    assert shards.parse_shard("1/4") == shards.Shard(1, 4) and shards.Shard(1, 4).name == "shard-1-of-4"
    assert shards.Shard(1, 3).items(list("abcdefg")) == ["b", "e"]
    parts = [shards.Shard(k, 3).items(list(range(10))) for k in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))  # every item once
    for text in ("4/4", "1-4", "a/b", "-1/3", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            shards.parse_shard(text)


def _run_record(folder: Path) -> dict:
    """run.json but for its per-run fields."""
    return {k: v for k, v in json.loads((folder / "run.json").read_text()).items() if k not in PER_RUN_FIELDS}


def test_merged_shards_are_byte_identical_to_one_process(tmp_path):
    _write_folder(tmp_path / "in")
    deep = cv2.imread(str(tmp_path / "in" / "img3.png")).astype(np.uint32) * 4095 // 255  # a reading note
    cv2.imwrite(str(tmp_path / "in" / "img3.png"), deep.astype(np.uint16))
    one = infer.run_folder_inference(EquivariantModel(), tmp_path / "in", tmp_path / "one", SETTINGS, progress=False,
                                     workers=0)
    out = tmp_path / "sharded"
    for k in (0, 2):
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(k, 3), SETTINGS, progress=False, workers=0)
    with pytest.raises(shards.ShardsIncomplete, match=r"shard 1/3 is missing"):
        shards.merge_shards(out)
    assert not (out / "summary.csv").exists() and not (out / "run.json").exists()
    report = shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(1, 3), SETTINGS, progress=False,
                              workers=0)
    assert report.images == 3 and report.segmented == 3 and not report.failed  # img0, img3, img6 (broken.png is shard 0's)
    merged = shards.merge_shards(out)
    names = _same_files(tmp_path / "one", out)
    assert "summary.csv" in names and "coco_instances.json" in names and "img7_cells.geojson" in names
    assert merged.failed.keys() == one.failed.keys() == {"broken.png"}
    assert "12-bit" in (out / "summary.csv").read_text()  # the notes column, read again from the input
    assert _run_record(tmp_path / "one") == _run_record(out)  # export_names, overlays, notes, ... included
    b = json.loads((out / "run.json").read_text())
    assert "12-bit" in b["notes"]["img3.png"][0] and list(b["notes"]) == ["img3.png"]
    assert b["shards"] == 3 and set(b["peak_rss_mb"]) == {"0", "1", "2"}
    # every image file was written by exactly one shard
    written = [name for k in range(3) for _, _, name in json.loads(shards.shard_record_path(out, shards.Shard(k, 3)).read_text())["images"]]
    assert sorted(written) == sorted(set(written)) and len(written) == 9
    # a plain run recognises every merged file as a recorded run's own: --resume finds every image
    # done (and writes the same files), --overwrite replaces them
    resumed = infer.run_folder_inference(EquivariantModel(), tmp_path / "in", out, SETTINGS, progress=False, workers=0,
                                         resume=True)
    assert json.loads(resumed.record_path.read_text())["resumed"] == 8
    _same_files(tmp_path / "one", out)
    infer.run_folder_inference(EquivariantModel(), tmp_path / "in", out, SETTINGS, progress=False, workers=0,
                               overwrite=True)
    _same_files(tmp_path / "one", out)
    assert _run_record(tmp_path / "one") == _run_record(out)


def test_a_plain_run_a_shard_and_a_merge_never_write_one_folder_at_once(tmp_path):
    _write_folder(tmp_path / "in", n=4, broken=False)
    out = tmp_path / "out"
    run = dict(settings=SETTINGS, progress=False, workers=0)
    plain = _holder(f"files.folder_lock({str(out)!r}, what='run')")  # as run_folder_inference holds it
    try:
        with pytest.raises(FolderInUse, match=rf"in use.*process {plain.pid}"):
            shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 2), **run)
        with pytest.raises(FolderInUse, match=rf"in use.*process {plain.pid}"):
            shards.merge_shards(out)
    finally:
        plain.stdin.close()
        assert plain.wait() == 0
    assert not (out / shards.SHARDS_DIR / "shard-0-of-2.json").exists()  # refused before writing anything
    shard = _holder(f"shards.shard_locks({str(out)!r}, shards.Shard(1, 2))")  # as shard 1/2 holds them
    try:
        report = shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 2), **run)  # side by side
        assert report.segmented == 2
        with pytest.raises(FolderInUse, match=rf"in use.*process {shard.pid}"):  # the same shard twice
            shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(1, 2), **run)
        with pytest.raises(FolderInUse, match="in use"):
            infer.run_folder_inference(EquivariantModel(), tmp_path / "in", tmp_path / "out", overwrite=True, **run)
        with pytest.raises(FolderInUse, match="in use"):
            shards.merge_shards(out)
    finally:
        shard.stdin.close()
        assert shard.wait() == 0
    shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(1, 2), **run)
    assert shards.merge_shards(out).n_ok == 4


def test_a_shard_and_a_merge_refuse_an_output_in_the_input_and_a_users_folder_file(tmp_path):
    _write_folder(tmp_path / "in", n=2, broken=False)
    run = dict(settings=SETTINGS, progress=False, workers=0)
    with pytest.raises(ValueError, match="inside the input"):
        shards.run_shard(EquivariantModel(), tmp_path / "in", tmp_path / "in" / "out", shards.Shard(0, 2), **run)
    assert not (tmp_path / "in" / "out").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("the user's")
    with pytest.raises(FileExistsError, match="summary.csv"):  # refused before any work
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 2), **run)
    (out / "summary.csv").unlink()
    for k in range(2):
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(k, 2), **run)
    (out / "summary.csv").write_text("the user's")  # put there while the shards ran
    with pytest.raises(FileExistsError, match="summary.csv"):
        shards.merge_shards(out)
    assert (out / "summary.csv").read_text() == "the user's" and not (out / "run.json").exists()


def test_a_shard_never_replaces_what_it_did_not_write(tmp_path):
    _write_folder(tmp_path / "in", n=3, broken=False)
    out = tmp_path / "out"
    run = dict(settings=SETTINGS, progress=False, workers=0)
    shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 2), **run)
    with pytest.raises(FileExistsError, match="--resume"):  # the same shard again
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 2), **run)
    with pytest.raises(FileExistsError, match="another split"):  # another N in the same folder
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 3), **run)
    (out / "img1_cells.csv").write_text("someone else's")  # shard 1's image, written by no shard
    with pytest.raises(FileExistsError, match="img1"):
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(1, 2), **run)
    assert (out / "img1_cells.csv").read_text() == "someone else's"
    with shards.shard_locks(out, shards.Shard(0, 2)), pytest.raises(FolderInUse, match="in use"):
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 2), resume=True, **run)
    with pytest.raises(ValueError, match="tile_size"):  # a resumed shard must be the same run
        shards.run_shard(EquivariantModel(), tmp_path / "in", out, shards.Shard(0, 2), resume=True,
                         **{**run, "settings": SETTINGS.replace(tile_size=48)})


@pytest.fixture
def stand_in_slurm(tmp_path):
    """A stand-in `sbatch` that runs an array's tasks in turn (SLURM's variables set, output in
    tasks.log) and a job with a dependency at once; and a stand-in $PYTHON (see
    shard_stand_in_python.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(f"""#!/usr/bin/env bash
array="" dependency=""
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in --array=*) array=${{1#--array=}};; --dependency=*) dependency=${{1#--dependency=}};; esac
  shift
done
script=$1; shift
id=$(( $(wc -l < "{log}" 2>/dev/null || echo 0) + 100 ))
echo "job $id array=$array dependency=$dependency $*" >> "{log}"
if [ -n "$array" ]; then
  lo=${{array%-*}} hi=${{array#*-}}
  for ((k = lo; k <= hi; k++)); do
    SLURM_ARRAY_JOB_ID=$id SLURM_ARRAY_TASK_ID=$k SLURM_ARRAY_TASK_MIN=$lo SLURM_ARRAY_TASK_COUNT=$((hi - lo + 1)) \\
      bash "$script" "$@" >> "{tmp_path}/tasks.log" 2>&1
    echo "task $k exit $?" >> "{log}"
  done
else
  bash "$script" "$@" >> "{tmp_path}/tasks.log" 2>&1
  echo "job $id exit $?" >> "{log}"
fi
echo "$id;cluster"
""")
    (bin_dir / "sbatch").chmod(0o755)
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "{ROOT / "tests" / "shard_stand_in_python.py"}" "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    for name in [k for k in env if k.startswith("SLURM_")]:
        del env[name]
    return env, log


def test_job_array_with_a_killed_task_redone_then_merged(tmp_path, stand_in_slurm):
    env, log = stand_in_slurm
    _write_folder(tmp_path / "in", broken=False)
    out, mark, checkpoint = tmp_path / "out", tmp_path / "killed", tmp_path / "model.pth"
    checkpoint.write_bytes(b"stand-in: the stand-in python loads no checkpoint")
    options = ["--working-scale", "1", "--tile-size", "32", "--overlap", "8", "--batch-size", "6", "--device", "cpu",
               "--precision", "fp32", "--workers", "0", "--no-progress"]
    # shard 1/4's process dies at its last forward pass, the flush of its second image's last tiles:
    # the first image's tiles all ran in full batches before, and it was written
    batch, tiles = 6, len(tile_starts(96, 32, 8)) * len(tile_starts(112, 32, 8))
    assert (2 * tiles) % batch and -(-tiles // batch) <= (2 * tiles) // batch
    kill = {"KILL_SHARD": "1/4", "KILL_AT": str(-(-2 * tiles // batch)), "KILL_MARK": str(mark)}
    # paths relative to the folder the command runs from
    submit = subprocess.run(["bash", str(ROOT / "slurm_infer.sh"), "model.pth", "in", "out", *options], cwd=tmp_path,
                            env={**env, **kill}, capture_output=True, text=True, timeout=600)
    assert submit.returncode == 0, submit.stderr + (tmp_path / "tasks.log").read_text()
    calls = log.read_text().splitlines()
    assert calls[0].startswith("job 100 array=0-3 dependency= ") and "--merge" in calls[-2]
    assert "dependency=afterany:100 " in calls[-2]  # the merge waits for the array (its id without ";cluster")
    assert [c for c in calls if c.startswith("task")] == ["task 0 exit 0", "task 1 exit 137", "task 2 exit 0",
                                                          "task 3 exit 0"]
    assert calls[-1].endswith("exit 1") and mark.exists()  # the merge refused: shard 1 did not finish
    assert "shard 1/4 did not finish" in (tmp_path / "tasks.log").read_text()
    assert (out / "img1_cells.geojson").exists() and not (out / "img5_cells.geojson").exists()
    assert not (out / "summary.csv").exists()
    # the task again, by hand (as a requeue would): it resumes, and does only the image missing
    task = {**env, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    rerun = subprocess.run(["bash", str(ROOT / "slurm_infer.sh"), str(checkpoint), str(tmp_path / "in"), str(out), *options],
                           env=task, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "--resume" in rerun.stdout and "1 image(s) segmented, 1 done before, 0 failed" in rerun.stderr
    merge = subprocess.run(["bash", str(ROOT / "slurm_infer.sh"), "--merge", "out"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr
    one = infer.run_folder_inference(EquivariantModel(), tmp_path / "in", tmp_path / "one",
                                     SETTINGS.replace(device=None), progress=False, workers=0)
    assert one.n_ok == 8
    _same_files(tmp_path / "one", out)
    assert json.loads((out / "run.json").read_text())["resumed"] == 1
