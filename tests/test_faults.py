"""The faults found when the project was tried as a new user would (issue 16), one test each:
nothing lost, nothing silent, every bad option or file named in one line before any work."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from stand_ins import EquivariantModel, disks_image

from uni_seg import files as files_mod, outputs as outputs_mod
from uni_seg import checkpoints, config, infer, postproc, synthetic
from uni_seg.data import DataError

ROOT = Path(__file__).resolve().parent.parent


def _image_file(path: Path, shape: tuple[int, int], centres, seed: int = 0) -> None:
    image, _ = disks_image(shape, centres, 12, seed=seed)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _summary(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


SMALL = infer.InferenceSettings(tile_size=32, overlap=8)


# ----------------------------------------------------------------------- 1. export names collide
def test_inputs_that_share_a_name_each_get_their_own_exports(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "good.png", (300, 400), [(60, 60), (150, 200)])
    _image_file(inputs / "good.jpg", (200, 200), [(50, 50)], seed=1)
    _image_file(inputs / "good_png.png", (200, 200), [(100, 100)], seed=2)
    report = infer.run_folder_inference(EquivariantModel(), inputs, tmp_path / "out", SMALL, progress=False)
    names = {r["image"]: r["name"] for r in report.rows}
    assert len(set(names.values())) == 3 and report.n_ok == 3
    label = cv2.imread(str(tmp_path / "out" / f"{names['good.png']}_instances.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (300, 400)  # good.png's own exports, not good_png.png's
    assert outputs_mod.output_names([Path("A.png"), Path("a.jpg")]) == ["A_png", "a_jpg"]  # case-insensitive file systems
    assert {r["name"] for r in _summary(tmp_path / "out")} == set(names.values())


# ------------------------------------------------------ 2. one run per folder, never mixed
def test_a_non_empty_output_folder_is_refused_unless_overwrite_or_resume(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "a.png", (80, 80), [(40, 40)])
    out = tmp_path / "out"
    infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite.*--resume"):
        infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False)
    (out / "mine.txt").write_text("a file of the user's")
    report = infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, overwrite=True)
    assert report.n_ok == 1 and (out / "mine.txt").exists()  # only our outputs are replaced
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_killed_run_leaves_no_earlier_summary_and_resume_finishes_it(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        _image_file(inputs / f"img{i}.png", (80, 80), [(40, 40)], seed=i)
    out = tmp_path / "out"
    infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, workers=0)
    model, seen = EquivariantModel(), []

    def killed_at_the_second_image(tiles, owners):
        seen.extend(key for key, _, _ in owners)
        if len(set(seen)) == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a kill does: no `except Exception` catches it
        return infer.TileBatcher(model, SMALL)._model_forward(tiles, owners)

    with pytest.raises(KeyboardInterrupt):
        infer.run_folder_inference(model, inputs, out, SMALL.replace(batch_size=1), progress=False, overwrite=True,
                                   workers=0, forward=killed_at_the_second_image)
    assert not (out / "summary.csv").exists() and not (out / "coco_instances.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    with pytest.raises(ValueError, match="settings"):  # another run's settings: not mixed
        infer.run_folder_inference(model, inputs, out, SMALL.replace(tile_size=48), progress=False, resume=True,
                                   workers=0)
    report = infer.run_folder_inference(model, inputs, out, SMALL.replace(batch_size=1), progress=False, resume=True,
                                        workers=0)
    assert report.n_ok == 3 and json.loads((out / "run.json").read_text())["resumed"] == 1  # img0: read back, not redone
    coco = json.loads((out / "coco_instances.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["img0.png", "img1.png", "img2.png"]


# ------------------------------------------------- 3. every option checked before any image
@pytest.mark.parametrize("option, message", [
    (["--working-scale", "-1"], "--working-scale"), (["--working-scale", "0"], "--working-scale"),
    (["--tile-size", "100"], "--tile-size"), (["--batch-size", "0"], "--batch-size"),
    (["--overlap", "300"], "--overlap"), (["--limit", "0"], "--limit"),
])
def test_cli_refuses_a_bad_option_before_loading_anything(tmp_path, monkeypatch, capsys, option, message):
    monkeypatch.setattr(infer, "load_inference_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["--checkpoint", "x.pth", "--input", str(tmp_path), "--output", str(tmp_path / "o"), *option])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --------------------------------------------- 4. tuned parameters only for their checkpoint
def test_tuned_postproc_parameters_are_used_only_for_their_checkpoint(tmp_path):
    tuned = postproc.DEFAULT_POSTPROC_PARAMS.replace(fg_threshold=0.3)
    path = postproc.save_postproc_params(tmp_path / "pp.json", tuned, 0.9, tuned_for={"checkpoint": "a.pth",
                                                                                     "checkpoint_id": "AAA"})
    params, line = postproc.select_postproc(None, path, "AAA")
    assert params == tuned and "tuned for this checkpoint" in line
    params, line = postproc.select_postproc(None, path, "BBB")
    assert params == postproc.DEFAULT_POSTPROC_PARAMS and "another checkpoint" in line and "--postproc" in line
    params, line = postproc.select_postproc(path, None, "BBB")  # named by the user: used, with a warning
    assert params == tuned and "WARNING" in line
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"params": tuned.as_dict()}))
    assert postproc.select_postproc(None, legacy, "AAA")[0] == postproc.DEFAULT_POSTPROC_PARAMS


# -------------------------------------------- 5. links, loops, folders named like images
def test_broken_links_loops_and_folders_named_like_images_are_reported(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "real.png", (80, 80), [(40, 40)])
    (inputs / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (inputs / "loop.png").symlink_to(inputs / "loop.png")
    (inputs / "folder.jpg").mkdir()
    (inputs / "notes.txt").write_text("not an image")
    report = infer.run_folder_inference(EquivariantModel(), inputs, tmp_path / "out", SMALL, progress=False)
    rows = {r["image"]: r for r in _summary(tmp_path / "out")}
    assert rows["real.png"]["status"] == "ok" and report.n_ok == 1
    assert rows["dangling.png"]["status"] == "skipped" and "broken symbolic link" in rows["dangling.png"]["error"]
    assert rows["loop.png"]["status"] == "skipped" and "symbolic link loop" in rows["loop.png"]["error"]
    assert rows["folder.jpg"]["status"] == "skipped" and "folder" in rows["folder.jpg"]["error"]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(record["skipped"]) == 3 and record["not_images"] == 1


# --------------------------------------------------- 6. a mistyped parameter name stops the run
def test_a_mistyped_parameter_name_is_named_with_the_closest_valid_one():
    with pytest.raises(ValueError, match=r"EPOCS_PHASE1 \(did you mean EPOCHS_PHASE1\?\)"):
        config.check_parameter_names({"PROFILE": "demo", "EPOCHS_PHASE1": None, "EPOCS_PHASE1": 1})
    config.check_parameter_names({"PROFILE": "demo", "DEVICE": torch.device("cpu")})  # not a parameter's kind of value
    with pytest.raises(ValueError, match="did you mean EPOCHS_PHASE1"):
        config.resolve_config("demo", epocs_phase1=1)


def test_papermill_run_with_a_mistyped_parameter_fails_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "papermill", "cell_instance_segmentation.ipynb", str(tmp_path / "o.ipynb"),
                             "-k", "uni_seg", "--cwd", ".", "-p", "EPOCS_PHASE1", "1", "-p", "RESULTS_DIR", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "did you mean EPOCHS_PHASE1" in result.stdout + result.stderr
    assert not (tmp_path / "reports").exists() and not list(tmp_path.glob("*.json"))


# ----------------------------------------------- 7. papermill's own inspector reads every parameter
def test_papermill_reads_every_parameter_with_its_help(caplog):
    import dataclasses

    import papermill

    with caplog.at_level(logging.WARNING):
        found = papermill.inspect_notebook(str(ROOT / "cell_instance_segmentation.ipynb"))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert set(found) == {f.name.upper() for f in dataclasses.fields(config.RunConfig)}
    assert all(p["help"] for p in found.values())


# ------------------------------------------ 8. synthetic smears only where they were asked for
def test_an_explicit_data_dir_without_a_dataset_is_an_error_not_synthetic_data(tmp_path):
    typo = tmp_path / "data" / "rwa"
    with pytest.raises(DataError, match="holds no dataset.*original,mask.*SYNTHETIC_IMAGES"):
        synthetic.synthetic_data_wanted(typo, 16, data_dir_given=True, synthetic_images_given=False)
    assert not typo.exists()
    assert synthetic.synthetic_data_wanted(typo, 16, data_dir_given=True, synthetic_images_given=True)
    assert synthetic.synthetic_data_wanted(tmp_path / "default", 16, data_dir_given=False, synthetic_images_given=False)
    with pytest.raises(DataError, match="holds no dataset"):  # the full profile makes none
        synthetic.synthetic_data_wanted(typo, 0, data_dir_given=False, synthetic_images_given=False)


# ----------------------------------------------------- 9. GPUs asked for, GPUs to be had
def test_n_gpus_above_the_visible_gpus_and_the_full_profile_on_cpu_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="N_GPUS=4 but 0 GPU"):
        config.check_training_device("demo", 4, trains=True, backbone="vit_tiny")
    with pytest.raises(ValueError, match="full profile.*N_GPUS=0"):
        config.check_training_device("full", None, trains=True, backbone="uni")
    config.check_training_device("full", 0, trains=True, backbone="uni")  # asked for the CPU
    config.check_training_device("full", None, trains=False, backbone="uni")  # evaluation only
    from uni_seg import train

    spec = train.spec_from_config(config.resolve_config("demo"), 1)
    with pytest.raises(ValueError, match="N_GPUS=4 but 0 GPU"):  # no longer four CPU processes
        train.launch_training(__import__("dataclasses").replace(spec, device="auto"), 4)


def test_a_rank_with_one_bound_gpu_uses_that_gpu(monkeypatch):
    from uni_seg import train

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert train.rank_gpu(3) == 0  # srun --gpus-per-task=1: each task sees only its own
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert train.rank_gpu(3) == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="LOCAL_RANK=3"):
        train.rank_gpu(3)


def _read_pids(fifo: Path, pids: set[int], n: int, exclude: int, hang_limit: float = 300) -> set[int]:
    """Read one pid a line from `fifo` until `n` pids other than `exclude` came. Opened read-write
    (Linux), so the read never sees end-of-file between writers; `hang_limit` only guards against
    a hang (select's timeout), it never decides the outcome of a passing run."""
    import select

    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    buffer = b""
    try:
        while len(pids - {exclude}) < n:
            ready, _, _ = select.select([fd], [], [], hang_limit)
            if not ready:
                break
            buffer += os.read(fd, 4096)
            *lines, buffer = buffer.split(b"\n")
            pids.update(int(line) for line in lines if line.strip())
    finally:
        os.close(fd)
    return pids - {exclude}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a FIFO opened read-write: Linux")
def test_spawned_ranks_exit_when_the_parent_is_killed(tmp_path):
    psutil = pytest.importorskip("psutil")
    from train_stand_ins import tiny_spec

    from uni_seg import train

    # each rank announces its pid when it builds its model: the kill comes after both did, not after a clock
    fifo = tmp_path / "ranks.fifo"
    os.mkfifo(fifo)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(train.spec_to_json(tiny_spec(tmp_path, epochs=100_000, batch_size=2,
                                                      model={"announce": str(fifo)})))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "uni_seg.train", "--spec", str(spec_path), "--nproc", "2",
                               "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks: list = []
    try:
        pids = _read_pids(fifo, set(), 2, exclude=parent.pid)
        ranks = [psutil.Process(pid) for pid in pids]
        assert len(ranks) == 2, "the two ranks did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs(ranks, timeout=60)
        assert not alive, f"{len(alive)} rank(s) still running after the parent was killed"
    finally:
        parent.kill()
        for process in ranks:
            if process.is_running():
                process.kill()


# ----------------------------------------------------- 10. every value checked in §0
def test_every_value_is_checked_when_the_parameters_are_resolved():
    with pytest.raises(ValueError) as error:
        config.resolve_config("demo", epochs_phase1=-1, batch_size_phase2=0, lr_phase1=0.0, tile_overlap=128,
                              use_tta="yes", export_images=-2)
    message = str(error.value)
    for part in ("EPOCHS_PHASE1=-1", "BATCH_SIZE_PHASE2=0", "LR_PHASE1=0.0", "TILE_OVERLAP=128", "USE_TTA='yes'",
                 "EXPORT_IMAGES=-2"):
        assert part in message  # all at once


# --------------------------------------- 11, 12, 13. rejected checkpoints, one line, no traceback
class _Foreign:
    pass


@pytest.mark.parametrize("make, expected", [
    (lambda p: torch.save({"a": _Foreign()}, p), "holds a Python object of type"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)), "not a PyTorch checkpoint"),
    (lambda p: p.write_bytes(b""), "empty or ends early"),
    (lambda p: p.mkdir(), "is a folder, not a checkpoint file"),
])
def test_a_rejected_checkpoint_is_one_line_naming_the_file_and_what_is_wrong(tmp_path, make, expected):
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and expected in message and "\n" not in message
    assert "weights_only" not in message and "False" not in message


def test_any_random_bytes_are_named_not_a_checkpoint(tmp_path):
    """Whatever error torch's reader meets in random bytes (an unpickling error, or a KeyError,
    IndexError or UnicodeDecodeError from the legacy reader), the reason says what the file is."""
    path = tmp_path / "model.pth"
    for seed in range(40):
        path.write_bytes(np.random.default_rng(seed).bytes(256))
        with pytest.raises(checkpoints.CheckpointError) as error:
            checkpoints.load_checkpoint(path)
        assert "not a PyTorch checkpoint" in str(error.value) or "damaged" in str(error.value), (seed, str(error.value))


def test_the_cli_reports_a_rejected_checkpoint_in_one_line_without_a_traceback(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "model.pth").write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "uni_seg.infer", "--checkpoint", str(tmp_path / "model.pth"),
                             "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "model.pth" in error_lines[0]


def test_weights_that_do_not_fit_name_the_first_few_tensors_and_the_count():
    expected = {f"blocks.{i}.w": torch.zeros(4, 4) for i in range(50)}
    given = {f"blocks.{i}.w": torch.zeros(8, 4) for i in range(48)} | {"extra": torch.zeros(1)}
    message = files_mod.state_dict_mismatch(expected, given)
    assert message.startswith("48 key(s) of another shape (first: blocks.0.w (8, 4) in the file, (4, 4) in the model")
    assert "2 missing (first: blocks.48.w, blocks.49.w)" in message and "1 unexpected (first: extra)" in message
    assert message.count("blocks.") <= 5 and "\n" not in message
    assert files_mod.state_dict_mismatch(expected, expected) == ""


# ------------------------------------------------------ 17. valid GeoJSON polygons
def test_exported_polygons_are_valid_for_every_cell_of_the_real_masks(real_subset):
    shapely = pytest.importorskip("shapely")

    from uni_seg.data import parse_mask_to_instances, read_mask
    from uni_seg.export import cell_polygons

    checked = 0
    for mask in sorted(real_subset.glob("*/mask/*.png")):
        inst = parse_mask_to_instances(read_mask(mask), source=mask)[0]
        for cell, pieces in cell_polygons(inst).items():
            geometry = shapely.MultiPolygon([(p[0], p[1:]) for p in pieces])
            assert geometry.is_valid, (mask.name, cell, shapely.is_valid_reason(geometry))
            assert abs(geometry.area - (inst == cell).sum()) <= 0.1 * (inst == cell).sum()
            checked += 1
    assert checked > 7000


def test_a_cell_pinched_to_a_diagonal_contact_and_a_cell_with_a_hole_give_valid_polygons():
    shapely = pytest.importorskip("shapely")
    from uni_seg.export import cell_polygons

    inst = np.zeros((20, 20), np.int32)
    inst[2:6, 2:6] = 1
    inst[6:10, 6:10] = 1  # touches the first square only at a corner
    inst[12:19, 12:19] = 2
    inst[15, 15] = 0  # a hole
    polygons = cell_polygons(inst)
    assert shapely.Polygon(polygons[1][0][0], polygons[1][0][1:]).is_valid
    assert len(polygons[2][0]) == 2  # a shell and one hole ring
    assert shapely.Polygon(polygons[2][0][0], polygons[2][0][1:]).is_valid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a FIFO opened read-write: Linux")
def test_cpu_workers_end_when_their_parent_is_killed(tmp_path):
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
        workers = _read_pids(fifo, set(), 2, exclude=parent.pid)
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
