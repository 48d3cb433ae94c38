"""End to end: the notebook under papermill on a tiny demo configuration, as a user runs it.

One module-scoped workspace holds the data, cache, checkpoints and results of three runs:
1. `tools/run_notebook.sh` (what `make demo` calls): every stage, both HTML reports;
2. `slurm_train.sh` under plain bash with SLURM's variables, RESUME_TRAINING on and one more
   epoch per phase: it must continue from the checkpoints, not start over;
3. `slurm_eval.sh`: evaluation only, from the checkpoints.
A fake Hugging Face token is planted in the environment of every run; it must not appear in any
file the runs write.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLANTED_TOKEN = "hf_PLANTEDfakeTOKEN0123456789abcdefXYZ"


def tiny_parameters(work: Path, epochs: int) -> list[str]:
    values = {
        "PROFILE": "demo", "DATA_DIR": work / "synthetic", "PROCESSED_DIR": work / "processed",
        "CHECKPOINT_DIR": work / "checkpoints", "SYNTHETIC_IMAGES": 5, "CROP_SIZE": 64,
        "TILE_SIZE": 64, "TILE_OVERLAP": 16, "EPOCHS_PHASE1": epochs, "EPOCHS_PHASE2": epochs,
        "BATCH_SIZE_PHASE1": 2, "BATCH_SIZE_PHASE2": 2, "GRAD_ACCUM_TARGET": 2, "CROPS_PER_IMAGE": 1,
        "WARMUP_EPOCHS": 0, "N_FIGURE_SAMPLES": 1, "EXPORT_IMAGES": 2, "TUNE_POSTPROC": False,
        "EXTERNAL_EVAL_DIR": work / "external",
    }
    params: list[str] = []
    for name, value in values.items():
        params += ["-p", name, str(value)]
    return params


def run(command: list[str], work: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_TOKEN": PLANTED_TOKEN, "RESULTS_DIR": str(work / "results"),
           "LOG_DIR": str(work / "logs"), "PYTHON": str(ROOT / ".venv" / "bin" / "python"), **extra_env}
    if not Path(env["PYTHON"]).exists():
        env.pop("PYTHON")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


@pytest.fixture(scope="module")
def workspace(write_external_set, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    write_external_set(work / "external")
    run(["bash", "tools/run_notebook.sh", "e2e", *tiny_parameters(work, epochs=1)], work, {})
    return work


def executed_text(work: Path, run_name: str) -> str:
    notebook = json.loads((work / "results" / "reports" / f"{run_name}.ipynb").read_text())
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            texts.append("".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_demo_run_writes_metrics_figures_exports_and_both_reports(workspace):
    results = workspace / "results"
    metrics = json.loads((results / "metrics.json").read_text())
    for key in ("pq", "map", "f1", "weights"):
        assert any(key in k for k in json.dumps(metrics).split('"')), key
    assert list(results.glob("visualization_sample_*.png"))
    assert (results / "training_curves_phase1.png").exists()
    assert (results / "training_curves_phase2.png").exists()
    assert list((results / "exports").rglob("*.geojson"))
    assert list((results / "exports").rglob("*coco*.json"))
    for report in ("e2e.html", "e2e.no-code.html"):
        assert (results / "reports" / report).stat().st_size > 10_000
    no_code = (results / "reports" / "e2e.no-code.html").read_text()
    assert "def resolve_config" not in no_code  # the reviewers' report hides the code
    # §9's classical baseline and the smears from elsewhere, in metrics.json and the report's summary
    assert metrics["baseline"]["tuned_on"].startswith("train (") and metrics["baseline"]["dataset"]["pq"] is not None
    assert metrics["external"]["n_images"] == 2 and set(metrics["external"]["methods"]) == {"model", "baseline"}
    assert "Smears from elsewhere: 2 images" in no_code and "The classical baseline on the same test images" in no_code


def test_resubmitted_train_script_resumes_instead_of_starting_over(workspace):
    params = " ".join(tiny_parameters(workspace, epochs=2))
    run(["bash", "slurm_train.sh"], workspace,
        {"SLURM_JOB_ID": "101", "SLURM_SUBMIT_DIR": str(ROOT), "PROFILE": "demo", "RUN_NAME": "resumed",
         "N_GPUS": "0", "EXTRA_PARAMS": params})  # no GPU here: the script would (rightly) refuse N_GPUS=1
    text = executed_text(workspace, "resumed")
    assert "Resuming from epoch 1" in text
    assert (workspace / "logs" / "resumed_101.log").exists()


def test_eval_script_evaluates_from_checkpoints_without_training(workspace):
    params = " ".join(tiny_parameters(workspace, epochs=2))
    before = (workspace / "checkpoints" / "latest_phase1.pth").stat().st_mtime_ns
    run(["bash", "slurm_eval.sh"], workspace,
        {"SLURM_JOB_ID": "102", "SLURM_SUBMIT_DIR": str(ROOT), "PROFILE": "demo", "EXTRA_PARAMS": params})
    assert (workspace / "checkpoints" / "latest_phase1.pth").stat().st_mtime_ns == before
    assert (workspace / "results" / "reports" / "eval.html").exists()
    assert json.loads((workspace / "results" / "metrics.json").read_text())


def test_no_planted_token_in_anything_the_runs_wrote(workspace):
    leaks = [str(path) for path in workspace.rglob("*")
             if path.is_file() and PLANTED_TOKEN.encode() in path.read_bytes()]
    assert not leaks, f"token found in {leaks}"
