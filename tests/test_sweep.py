"""`uni-seg sweep` (uni_seg.sweep): a grid checked before any run, runs recorded in their folders
(finished ones skipped, killed or failed ones redone), the table of mean and sd over seeds, and
the SLURM array path of slurm_sweep.sh with a stand-in `sbatch`.

Fast tests run the sweep with a stand-in runner (a function writing a metrics.json) or a tiny
stand-in notebook under papermill; the slow one runs the real notebook on synthetic smears.
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from uni_seg.sweep import (GridError, load_grid, main, read_record, run_figures, run_grid, run_state, write_table)

from sweep_stand_ins import fake_metrics

ROOT = Path(__file__).resolve().parent.parent


def write_grid(path: Path, configurations: dict, seeds=(0, 1), base=None, **extra) -> Path:
    doc = {"description": "a test grid", "base": base if base is not None else {"PROFILE": "demo", "EPOCHS_PHASE1": 1},
           "configurations": configurations, "seeds": list(seeds), **extra}
    path.write_text(json.dumps(doc))
    return path


def pq_of(run) -> float:
    return 0.8 + 0.01 * run.seed + (0.05 if "pretrained" in run.configuration else 0.0)


class FakeRunner:
    """Stands in for the notebook: writes the run's metrics.json (PQ from configuration and seed),
    or, for the runs in `kill`, stops half-way as a killed run would (checkpoint written, no
    metrics, an exception instead of an exit status); runs in `fail` exit 1."""

    def __init__(self, kill=(), fail=()):
        self.calls, self.kill, self.fail = [], set(kill), set(fail)

    def __call__(self, run, out):
        self.calls.append(run.name)
        folder = run.folder(out)
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        (folder / "checkpoints" / "latest_phase1.pth").write_text("weights")
        if run.name in self.kill:
            raise KeyboardInterrupt("killed")
        if run.name in self.fail:
            return 1
        (folder / "results").mkdir(exist_ok=True)
        (folder / "results" / "metrics.json").write_text(json.dumps(fake_metrics(pq_of(run))))
        (folder / "results" / "postproc_params.json").write_text(json.dumps({"score": {"pq": pq_of(run) - 0.1}}))
        return 0


# --- the grid, checked before any run ------------------------------------------------------------

@pytest.mark.parametrize("configuration, message", [
    ({"EPOCS_PHASE1": 2}, "unknown parameter(s) EPOCS_PHASE1 (did you mean EPOCHS_PHASE1?)"),
    ({"CROP_SIZE": 100}, "CROP_SIZE=100 must be a multiple of 16"),
    ({"WORKING_SCALE": "0.5"}, "WORKING_SCALE='0.5' must be a number, not str"),
    ({"EPOCHS_PHASE1": 1.5}, "EPOCHS_PHASE1=1.5 must be an integer, not float"),
    ({"AUG_HED": 2.0}, "AUG_HED=2.0 must be a number in [0, 1]"),
    ({"BACKBONE": "vit_huge"}, "BACKBONE='vit_huge' is not one of"),
    ({"SEED": 3}, "SEED is set by the sweep for each run"),
    ({"epochs_phase1": 2}, "'epochs_phase1' (write EPOCHS_PHASE1)"),
])
def test_a_bad_grid_entry_is_refused_in_one_line_before_any_run(tmp_path, capsys, configuration, message):
    grid = write_grid(tmp_path / "grid.json", {"good": {}, "bad": configuration})
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        main([str(grid), "--out", str(out)], prog="uni-seg sweep")
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"uni-seg sweep: error: {grid}: configuration 'bad': ") and message in err, err
    assert not out.exists()  # nothing ran, not even the good configuration


@pytest.mark.parametrize("doc, message", [
    ({"configurations": {"a": {}}, "seeds": [0, 0]}, "\"seeds\" must be a list of distinct integers"),
    ({"configurations": {"a": {}}, "seeds": [0], "seed": [1]}, "unknown key 'seed' (did you mean 'seeds'?)"),
    ({"configurations": {}, "seeds": [0]}, "\"configurations\" must be a non-empty object"),
    ({"configurations": {"a b": {}}, "seeds": [0]}, "configuration name 'a b' may hold only"),
])
def test_a_bad_grid_file_is_refused(tmp_path, doc, message):
    (tmp_path / "grid.json").write_text(json.dumps(doc))
    with pytest.raises(GridError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_grid(tmp_path / "grid.json", ROOT)


def test_grid_runs_have_their_seed_profile_and_absolute_paths(tmp_path):
    (tmp_path / "boxes").mkdir()
    grid = write_grid(tmp_path / "grid.json", {"a": {"WORKING_SCALE": 0.75}, "b": {"WEIGHTS": "none"}}, seeds=[3, 5],
                      base={"PROFILE": "demo", "EXTERNAL_EVAL_DIR": str(tmp_path / "boxes"), "DATA_DIR": "data/x"})
    runs = load_grid(grid, ROOT).runs
    assert [(r.index, r.configuration, r.seed) for r in runs] == [(0, "a", 3), (1, "a", 5), (2, "b", 3), (3, "b", 5)]
    assert runs[1].parameters == {"PROFILE": "demo", "EXTERNAL_EVAL_DIR": str(tmp_path / "boxes"),
                                  "DATA_DIR": str(ROOT / "data" / "x"), "WORKING_SCALE": 0.75, "SEED": 5}
    assert runs[2].parameters["WEIGHTS"] == "none"  # a choice, not a path
    params = runs[0].notebook_parameters(tmp_path / "out")
    assert params["RESULTS_DIR"] == str(tmp_path / "out" / "runs" / "a" / "seed3" / "results")
    assert params["RUN_NAME"] == "a_seed3" and params["CHECKPOINT_DIR"].endswith("a/seed3/checkpoints")


def test_the_repository_grids_are_valid():
    weights = ROOT.parent / "shared" / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.pth"
    if not weights.is_file() or not (ROOT.parent / "shared" / "data" / "bccd_detection").is_dir():
        pytest.skip(f"{weights} or ../shared/data/bccd_detection is absent (the grids name them)")
    grid = load_grid(ROOT / "sweeps" / "vit_tiny_pretraining.json", ROOT)
    assert len(grid.runs) == 27 and grid.seeds == (0, 1, 2)
    assert {r.parameters["WEIGHTS"] for r in grid.runs} == {"none", str(weights.resolve())}
    assert len(load_grid(ROOT / "sweeps" / "vit_tiny_bbbc041.json", ROOT).runs) == 18  # random, pretrained, pretrained_stain(_long, _longer, _longer_image_skip)


# --- running, resuming, the table ----------------------------------------------------------------

def test_sweep_writes_the_table_skips_finished_runs_and_redoes_a_killed_one(tmp_path):
    grid = load_grid(write_grid(tmp_path / "grid.json", {"random": {}, "pretrained": {}}, seeds=[0, 1, 2]), ROOT)
    out = tmp_path / "sweep"
    runner = FakeRunner(kill={"pretrained_seed1"})
    with pytest.raises(KeyboardInterrupt):  # the sweep itself is killed during run 4
        run_grid(grid, out, runner, log=lambda _: None)
    assert runner.calls == ["random_seed0", "random_seed1", "random_seed2", "pretrained_seed0", "pretrained_seed1"]
    killed = grid.runs[4]
    assert read_record(killed.folder(out))["status"] == "running" and run_state(killed, out) == "incomplete"

    runner = FakeRunner()
    assert run_grid(grid, out, runner, log=lambda _: None) == []
    assert runner.calls == ["pretrained_seed1", "pretrained_seed2"]  # finished runs are not redone
    assert read_record(killed.folder(out))["attempts"] == 2
    assert (killed.folder(out) / "checkpoints" / "latest_phase1.pth").exists()  # the redo resumes from it

    csv_path, md_path, runs_path = write_table(grid, out)
    import csv
    rows = {row["configuration"]: row for row in csv.DictReader(csv_path.open())}
    pqs = [0.85, 0.86, 0.87]
    assert float(rows["pretrained"]["pq_mean"]) == pytest.approx(statistics.fmean(pqs))
    assert float(rows["pretrained"]["pq_sd"]) == pytest.approx(statistics.stdev(pqs))
    assert float(rows["random"]["val_pq_mean"]) == pytest.approx(0.71)
    assert float(rows["random"]["ext_recall_RBC_mean"]) == pytest.approx(0.61)
    assert rows["random"]["runs"] == "3/3" and rows["random"]["folders"].split() == [
        "runs/random/seed0", "runs/random/seed1", "runs/random/seed2"]
    baseline = rows["classical baseline (runs of random, pretrained)"]  # the same result: one row
    assert baseline["method"] == "baseline" and float(baseline["pq_mean"]) == pytest.approx(0.7671)
    assert baseline["pq_sd"] == "0.0" and float(baseline["ext_recall_Platelets_mean"]) == pytest.approx(0.175)
    md = md_path.read_text()
    assert "| pretrained | 3/3 | 0.7600 ± 0.0100 | 0.8600 ± 0.0100 |" in md and "ext. recall RBC" in md
    assert len(list(csv.DictReader(runs_path.open()))) == 12  # 6 runs, model and baseline

    runner = FakeRunner()
    run_grid(grid, out, runner, log=lambda _: None)
    assert runner.calls == []


def test_a_failed_run_is_recorded_the_others_go_on_and_a_rerun_redoes_it(tmp_path, capsys):
    grid = load_grid(write_grid(tmp_path / "grid.json", {"a": {}}, seeds=[0, 1]), ROOT)
    out = tmp_path / "sweep"
    failed = run_grid(grid, out, FakeRunner(fail={"a_seed0"}), log=lambda _: None)
    assert [r.name for r in failed] == ["a_seed0"]
    assert read_record(grid.runs[0].folder(out))["status"] == "failed"
    _, md, _ = write_table(grid, out)
    assert "| a | 1/2 |" in md.read_text()
    runner = FakeRunner()
    assert run_grid(grid, out, runner, log=lambda _: None) == [] and runner.calls == ["a_seed0"]


def test_rescore_runs_complete_runs_again_and_refuses_a_grid_that_would_retrain(tmp_path):
    grid = load_grid(write_grid(tmp_path / "grid.json", {"a": {}}, seeds=[0, 1]), ROOT)
    out = tmp_path / "sweep"
    run_grid(grid, out, FakeRunner(), log=lambda _: None)
    lines = []
    runner = FakeRunner()
    assert run_grid(grid, out, runner, task=1, rescore=True, log=lines.append) == []
    assert runner.calls == ["a_seed1"] and "rescoring a complete run (attempt 2)" in lines[0]
    assert read_record(grid.runs[1].folder(out))["status"] == "complete"
    retraining = load_grid(write_grid(tmp_path / "g2.json", {"b": {"RESUME_TRAINING": False}}, seeds=[0]), ROOT)
    runner = FakeRunner()
    with pytest.raises(GridError, match="RESUME_TRAINING false"):
        run_grid(retraining, tmp_path / "s2", runner, rescore=True, log=lambda _: None)
    assert runner.calls == []


def test_only_runs_the_named_configurations_and_names_a_mistyped_one(tmp_path):
    grid = load_grid(write_grid(tmp_path / "grid.json", {"random": {}, "pretrained": {}}, seeds=[0]), ROOT)
    runner = FakeRunner()
    run_grid(grid, tmp_path / "sweep", runner, only=["pretrained"], log=lambda _: None)
    assert runner.calls == ["pretrained_seed0"]
    with pytest.raises(GridError, match=r"--only pretrianed: no such configuration .* \(did you mean 'pretrained'\?\)"):
        run_grid(grid, tmp_path / "sweep", runner, only=["pretrianed"], log=lambda _: None)


def test_a_folder_of_other_settings_or_not_of_the_sweep_is_refused_not_overwritten(tmp_path):
    path = write_grid(tmp_path / "grid.json", {"a": {}}, seeds=[0])
    out = tmp_path / "sweep"
    run_grid(load_grid(path, ROOT), out, FakeRunner(), log=lambda _: None)
    changed = load_grid(write_grid(path, {"a": {"WORKING_SCALE": 0.75}}, seeds=[0]), ROOT)
    with pytest.raises(GridError, match=r"holds a run of other settings \(WORKING_SCALE: None -> 0.75\)"):
        run_grid(changed, out, FakeRunner(), log=lambda _: None)
    foreign = load_grid(write_grid(path, {"b": {}}, seeds=[0]), ROOT)
    foreign.runs[0].folder(out).mkdir(parents=True)
    (foreign.runs[0].folder(out) / "notes.txt").write_text("mine")
    with pytest.raises(GridError, match="holds files but no sweep_run.json"):
        run_grid(foreign, out, FakeRunner(), log=lambda _: None)
    assert (foreign.runs[0].folder(out) / "notes.txt").read_text() == "mine"


def test_run_figures_read_the_test_split_the_parasites_and_the_smears_from_elsewhere(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(fake_metrics(0.8, scheme=True)))
    model, baseline = run_figures(tmp_path)
    assert model["val_pq"] is None  # no tuning file
    assert model["pq"] == 0.8 and model["f1"] == pytest.approx(0.85) and model["count_abs_error"] == 3.0
    assert model["infected_f1"] == pytest.approx(12 / 16) and model["parasitemia_mae"] == 0.01
    assert model["ext_recall_WBC"] == 0.9 and model["ext_ap50"] == 0.3 and model["ext_count_error"] == 5.0
    assert baseline["pq"] == 0.7671 and baseline["ext_recall_RBC"] == 0.627
    (tmp_path / "metrics.json").write_text(json.dumps(fake_metrics(0.8, external=False)))
    model, _ = run_figures(tmp_path)
    assert "infected_f1" not in model and not any(k.startswith("ext_") for k in model)


# --- the command line and the cluster ------------------------------------------------------------

STAND_IN_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": "RESULTS_DIR = 'results'\nSEED = 0\nWORKING_SCALE = None\n"},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": (
            "import json, pathlib, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from sweep_stand_ins import fake_metrics\n"
            "pq = 0.8 + 0.01 * SEED + (0.05 if WORKING_SCALE else 0.0)\n"
            "pathlib.Path(RESULTS_DIR).mkdir(parents=True, exist_ok=True)\n"
            "pathlib.Path(RESULTS_DIR, 'metrics.json').write_text(json.dumps(fake_metrics(pq)))\n")},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_slurm_sweep_submits_one_array_task_per_run_then_the_table(tmp_path):
    """slurm_sweep.sh under plain bash with a stand-in `sbatch` that runs each array task in turn
    (and the table job), each task `uni-seg sweep GRID --task K` running a stand-in notebook."""
    notebook = tmp_path / "stand_in.ipynb"
    notebook.write_text(json.dumps(STAND_IN_NOTEBOOK))
    grid = write_grid(tmp_path / "grid.json", {"s05": {}, "s075": {"WORKING_SCALE": 0.75}}, seeds=[1])
    bin_dir, log, jobs_out = tmp_path / "bin", tmp_path / "sbatch_calls.txt", tmp_path / "jobs.out"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "sbatch $*" >> "{log}"\n'
        "array='' wrap='' script=''\n"
        'for arg in "$@"; do case $arg in --array=*) array=${arg#--array=};; --wrap=*) wrap=${arg#--wrap=};;\n'
        "  -*) ;; *) script=$arg;; esac; done\n"
        f'if [ -n "$wrap" ]; then bash -c "$wrap" >> "{jobs_out}" 2>&1 || exit 1\n'
        "else for ((k=${array%-*}; k<=${array#*-}; k++)); do\n"  # a job's output goes to its file, as SLURM's
        f'  SLURM_ARRAY_TASK_ID=$k SLURM_JOB_ID=70$k bash "$script" >> "{jobs_out}" 2>&1 || echo "task $k failed" >&2\n'
        "done; fi\n"
        "echo 77\n")
    (bin_dir / "sbatch").chmod(0o755)
    out = tmp_path / "sweep"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
           "NOTEBOOK": str(notebook), "KERNEL": "python3", "PYTHONPATH": str(ROOT)}
    env.pop("SLURM_SUBMIT_DIR", None)
    result = subprocess.run(["bash", str(ROOT / "slurm_sweep.sh"), str(grid), str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "failed" not in result.stderr, (result.stdout + result.stderr
                                                                      + jobs_out.read_text())[-4000:]
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "--array=0-1 " in calls[0] and calls[1].startswith("sbatch --parsable --dependency=afterany:77 ")
    assert "--table-only" in calls[1]
    for name in ("s05", "s075"):
        assert read_record(out / "runs" / name / "seed1")["status"] == "complete"
        assert (out / "runs" / name / "seed1" / "results" / "reports" / f"{name}_seed1.html").exists()
    md = (out / "table.md").read_text()
    assert "| s05 | 1/1 |" in md and "0.8600" in md  # seed 1, scale 0.75: 0.86


def test_slurm_sweep_refuses_a_bad_grid_before_submitting(tmp_path):
    grid = write_grid(tmp_path / "grid.json", {"a": {"EPOCS_PHASE1": 1}})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/usr/bin/env bash\ntouch "{tmp_path / "submitted"}"\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["bash", str(ROOT / "slurm_sweep.sh"), str(grid), str(tmp_path / "o")], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "did you mean EPOCHS_PHASE1?" in result.stderr
    assert not (tmp_path / "submitted").exists()


def test_the_command_is_listed_by_uni_seg():
    from uni_seg.cli import COMMANDS, usage

    assert COMMANDS["sweep"][0] == "uni_seg.sweep" and "sweep" in usage()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sweep_of_the_real_notebook_on_synthetic_smears_end_to_end(write_external_set, tmp_path):
    """Two configurations, one seed, 1 epoch per phase on 5 synthetic smears: the notebook under
    papermill for each run, the table, a rerun that runs nothing, and a killed run (its record left
    "running", as a kill leaves it) redone: three notebook runs, 7 min 14 s on 2 CPU cores shared with
    other jobs (the fast tests above cover the same logic with stand-ins)."""
    write_external_set(tmp_path / "external")
    base = {"PROFILE": "demo", "DATA_DIR": str(tmp_path / "synthetic"), "SYNTHETIC_IMAGES": 5, "CROP_SIZE": 64,
            "TILE_SIZE": 64, "TILE_OVERLAP": 16, "EPOCHS_PHASE1": 1, "EPOCHS_PHASE2": 1, "BATCH_SIZE_PHASE1": 2,
            "BATCH_SIZE_PHASE2": 2, "GRAD_ACCUM_TARGET": 2, "CROPS_PER_IMAGE": 1, "WARMUP_EPOCHS": 0,
            "N_FIGURE_SAMPLES": 1, "RUN_EXPORT": False, "TUNE_POSTPROC": False, "INFER_WORKERS": 0,
            "EXTERNAL_EVAL_DIR": str(tmp_path / "external")}
    grid = write_grid(tmp_path / "grid.json", {"d64": {}, "d16": {"DECODER_CHANNELS": 16}}, seeds=[0], base=base)
    out = tmp_path / "sweep"
    env_python = [sys.executable, "-m", "uni_seg.sweep", str(grid), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def sweep() -> subprocess.CompletedProcess:
        result = subprocess.run(env_python, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        return result

    sweep()
    md = (out / "table.md").read_text()
    for name in ("d64", "d16"):
        record = read_record(out / "runs" / name / "seed0")
        assert record["status"] == "complete" and record["attempts"] == 1
        assert 0 <= record["model"]["pq"] <= 1 and "ext_recall_all" in record["model"] and record["baseline"]["pq"] is not None
        assert f"| {name} | 1/1 |" in md
    assert "classical baseline (runs of d64, d16)" in md  # same data, scale and seed: one baseline row

    metrics = out / "runs" / "d64" / "seed0" / "results" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    assert "complete, skipped" in sweep().stdout
    assert metrics.stat().st_mtime_ns == before

    killed = out / "runs" / "d16" / "seed0"
    record = read_record(killed)
    (killed / "sweep_run.json").write_text(json.dumps({**record, "status": "running"}))
    result = sweep()
    assert "run 1 d16_seed0: redoing an incomplete run (attempt 2)" in result.stdout
    assert read_record(killed)["status"] == "complete" and read_record(killed)["attempts"] == 2
    assert metrics.stat().st_mtime_ns == before


def test_the_tables_replace_only_the_sweeps_own_files(tmp_path):
    grid = load_grid(write_grid(tmp_path / "grid.json", {"a": {}}, seeds=[0]), ROOT)
    mine, theirs = tmp_path / "sweep", tmp_path / "users"
    run_grid(grid, mine, FakeRunner(), log=lambda _: None)
    first = [path.read_bytes() for path in write_table(grid, mine)]
    assert [path.read_bytes() for path in write_table(grid, mine)] == first  # its own: replaced
    theirs.mkdir()
    (theirs / "table.csv").write_text("a user's table\n")
    with pytest.raises(GridError, match="table.csv is in the sweep folder but no table of a sweep of ours wrote it"):
        write_table(grid, theirs)
    assert (theirs / "table.csv").read_text() == "a user's table\n"
    assert not (theirs / "table.md").exists()
