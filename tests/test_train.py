"""§5-§7: the training engine (uni_seg.train).

Most tests train tiny stand-ins (tests/train_stand_ins.py: a few-conv model with the
CellSegModel interface, an in-memory dataset with the batch dict of CellCropDataset, a loss with
the CellSegLoss interface), so that they run in seconds and also inside spawned DDP workers and
killed subprocesses: the engine reaches them through `Factory("train_stand_ins:...")`, exactly as
it reaches `uni_seg` code in a notebook run. Kill tests stop `uni_seg.train` at a kill point it
announces (tests/train_kill_point.py), never after a clock. Tests named `test_real_*` use the
real modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uni_seg import phases as phases_mod
from uni_seg import cache as cache_mod
from uni_seg import checkpoints as C
from uni_seg import engine as E
from uni_seg import train as T

from train_stand_ins import TinySegModel, strip_timing, tiny_spec, weights

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- schedules
def test_lr_schedules_warm_up_restart_and_anneal():
    f = [E.lr_factor(e, "warmup_cosine_restarts", 100, warmup_epochs=5, restart_period=20) for e in range(46)]
    assert f[:5] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    assert f[5] == 1.0 and f[25] == 1.0 and f[45] == 1.0  # restarts every T0 epochs after warm-up
    assert f[15] == pytest.approx(0.5) and all(np.diff(f[5:25]) < 0)
    g = [E.lr_factor(e, "cosine", 50) for e in range(50)]
    assert g[0] == 1.0 and g[25] == pytest.approx(0.5) and all(np.diff(g) < 0) and g[-1] > 0
    with pytest.raises(ValueError, match="schedule"):
        E.lr_factor(0, "step", 10)


def test_phase_config_rejects_bad_values():
    with pytest.raises(ValueError, match="phase"):
        phases_mod.PhaseConfig(phase=3, epochs=1, patience=1, batch_size=1, lr_decoder=1e-3)
    with pytest.raises(ValueError, match="lr_lora"):
        phases_mod.PhaseConfig(phase=2, epochs=1, patience=1, batch_size=1, lr_decoder=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        phases_mod.PhaseConfig(phase=1, epochs=1, patience=1, batch_size=0, lr_decoder=1e-3)


# ----------------------------------------------------------------------------- checkpoint files
def test_atomic_save_leaves_no_temporary_and_round_trips_rng(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    state = C.capture_rng_state()
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    C.atomic_torch_save({"rng": state}, tmp_path / "x.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]
    loaded = torch.load(tmp_path / "x.pth", weights_only=True)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    C.restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_or_damaged_files_are_refused_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"format": E.CHECKPOINT_FORMAT, "x": _Evil()}))
    torch.save({"format": E.CHECKPOINT_FORMAT, "x": _Evil()}, tmp_path / "evil_torch.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pth")
    (tmp_path / "garbage.pth").write_bytes(os.urandom(1000))
    for name, message in [("evil.pth", "refused without unpickling"), ("evil_torch.pth", "refused without unpickling"),
                          ("state_dict.pth", "no format tag"), ("garbage.pth", "not a readable"),
                          ("missing.pth", "no checkpoint")]:
        with pytest.raises(C.CheckpointError, match=message):
            C.load_checkpoint(tmp_path / name)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


# ----------------------------------------------------------------------------- training
def test_resume_after_stop_matches_straight_run_exactly(tmp_path, capsys):
    straight = E.train_phase(tiny_spec(tmp_path / "a", epochs=4, precision="bf16"))
    E.train_phase(tiny_spec(tmp_path / "b", epochs=2, precision="bf16"))
    resumed = E.train_phase(tiny_spec(tmp_path / "b", epochs=4, precision="bf16"))
    out = capsys.readouterr().out
    best2 = C.load_checkpoint(tmp_path / "b/checkpoints/latest_phase1.pth")["history"][1]
    assert "Resuming from epoch 2 (best_val_loss=" in out
    assert strip_timing(resumed.history) == strip_timing(straight.history)
    wa, wb = weights(straight.latest_checkpoint), weights(resumed.latest_checkpoint)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert best2["epoch"] == 2
    # history and summary lines
    saved = json.loads((tmp_path / "b/results/history_phase1.json").read_text())
    assert [r["epoch"] for r in saved] == [1, 2, 3, 4]
    assert {"train_loss", "train_np", "train_hv", "train_nc", "val_loss", "val_np", "lr_decoder", "seconds",
            "data_seconds", "nonfinite_steps"} <= set(saved[0])
    assert "phase 1 epoch   4/4 | train" in out
    # a finished phase is not retrained
    again = E.train_phase(tiny_spec(tmp_path / "b", epochs=4, precision="bf16"))
    assert "already finished after epoch 4" in capsys.readouterr().out and again.epochs_done == 4


@pytest.mark.slow
def test_data_order_and_augmentation_do_not_depend_on_dataloader_workers(tmp_path):
    main = E.train_phase(tiny_spec(tmp_path / "w0", epochs=2))
    workers = E.train_phase(tiny_spec(tmp_path / "w2", epochs=2, num_workers=2))
    assert strip_timing(workers.history) == strip_timing(main.history)


def test_lr_follows_schedule_and_accumulation_counts_steps(tmp_path):
    res = E.train_phase(tiny_spec(tmp_path, epochs=3, warmup_epochs=1, restart_period=2))
    lrs = [r["lr_decoder"] for r in res.history]
    assert lrs == pytest.approx([1e-2 * 0.5, 1e-2, 1e-2 * 0.5])
    assert [r["steps"] for r in res.history] == [2, 2, 2]  # 8 crops, 4 per optimiser step


def test_checkpoint_holds_everything_for_inference_and_resume(tmp_path):
    res = E.train_phase(tiny_spec(tmp_path, epochs=2))
    ckpt = C.load_checkpoint(res.best_checkpoint)
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "epoch",
                "best_val_loss", "patience_counter", "history", "rng", "model_config", "working_scale",
                "weights_source", "phase", "format"):
        assert key in ckpt, key
    assert ckpt["working_scale"] == 0.5 and ckpt["phase"] == 1
    model, meta = C.load_model_from_checkpoint(res.best_checkpoint, "cpu", builder="train_stand_ins:TinySegModel")
    assert meta["epoch"] == res.best_epoch and not model.training
    ref = TinySegModel()
    ref.load_state_dict(ckpt["model_state_dict"])
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(model(x)["np"], ref(x)["np"])


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    E.train_phase(tiny_spec(tmp_path, epochs=1))
    with pytest.raises(C.CheckpointError, match=r"decoder_channels: checkpoint 8, this run 16"):
        E.train_phase(tiny_spec(tmp_path, epochs=2, model={"decoder_channels": 16}))
    with pytest.raises(C.CheckpointError, match=r"backbone: checkpoint 'tiny', this run 'other'"):
        E.train_phase(tiny_spec(tmp_path, epochs=2, model={"backbone": "other"}))
    os.replace(tmp_path / "checkpoints/latest_phase1.pth", tmp_path / "checkpoints/latest_phase2.pth")
    with pytest.raises(C.CheckpointError, match=r"phase: checkpoint 1, this run 2"):
        E.train_phase(tiny_spec(tmp_path, phase=2, epochs=2))


def test_resume_off_starts_over(tmp_path, capsys):
    E.train_phase(tiny_spec(tmp_path, epochs=2))
    res = E.train_phase(dataclasses.replace(tiny_spec(tmp_path, epochs=1), resume=False))
    assert "starts over" in capsys.readouterr().out and res.epochs_done == 1
    assert C.load_checkpoint(tmp_path / "checkpoints/latest_phase1.pth")["epoch"] == 1


@pytest.mark.parametrize("name", ["best_phase1.pth", "latest_phase1.pth"])
def test_training_refuses_to_replace_a_checkpoint_that_is_not_ours(tmp_path, name):
    spec = dataclasses.replace(tiny_spec(tmp_path, epochs=1), resume=False)  # a fresh start replaces both files
    mine = tmp_path / "checkpoints" / name
    mine.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, mine)  # the user's own model, no format tag of ours
    before = mine.read_bytes()
    with pytest.raises(C.CheckpointError, match=rf"{name} is not a uni_seg checkpoint.*phase 1 would replace it: "
                                                r"move it away or choose another CHECKPOINT_DIR"):
        E.train_phase(spec)
    assert mine.read_bytes() == before
    mine.unlink()
    E.train_phase(spec)
    E.train_phase(spec)  # a checkpoint of ours (a rerun's) is replaced, as before


def test_phase2_starts_from_phase1_best_and_stores_adapters(tmp_path):
    p1 = E.train_phase(tiny_spec(tmp_path, epochs=2))
    best1 = weights(p1.best_checkpoint)
    spec2 = tiny_spec(tmp_path, phase=2, epochs=2, model={"weights": "imagenet"})
    p2 = E.train_phase(spec2)
    ckpt = C.load_checkpoint(p2.best_checkpoint)
    assert ckpt["model_config"]["lora_rank"] == 2 and "lora_up.weight" in ckpt["model_state_dict"]
    assert ckpt["weights_source"] == "none"  # carried over from phase 1, not from the rebuilt architecture
    assert set(p2.history[0]) >= {"lr_lora", "lr_decoder"}
    assert torch.equal(ckpt["model_state_dict"]["backbone.weight"], best1["backbone.weight"])  # frozen
    model, meta = C.load_model_from_checkpoint(p2.best_checkpoint, builder="train_stand_ins:TinySegModel")
    assert meta["phase"] == 2 and model.lora_rank == 2


def test_weights_provenance_travels_from_phase_1_through_phase_2_and_resumes(tmp_path):
    """Where the backbone's weights came from is recorded by phase 1, kept by phase 2 (whose
    architecture is rebuilt without pretrained weights) and by a resume, and read back for inference."""
    E.train_phase(tiny_spec(tmp_path, epochs=1, model={"weights": "imagenet"}))
    recorded = C.load_checkpoint(tmp_path / "checkpoints/best_phase1.pth")["weights_provenance"]
    assert recorded["kind"] == "imagenet" and recorded["revision"] == "abc123"
    E.train_phase(tiny_spec(tmp_path, phase=2, epochs=1))  # rebuilt with weights="none"
    E.train_phase(tiny_spec(tmp_path, phase=2, epochs=2))  # resumed
    ckpt = C.load_checkpoint(tmp_path / "checkpoints/latest_phase2.pth")
    assert ckpt["weights_source"] == "imagenet" and ckpt["weights_provenance"] == recorded
    _, meta = C.load_model_from_checkpoint(tmp_path / "checkpoints/latest_phase2.pth", builder="train_stand_ins:TinySegModel")
    assert meta["weights_provenance"] == recorded and meta["weights_message"] == "weights: imagenet"


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path):
    E.train_phase(tiny_spec(tmp_path, epochs=1))
    E.train_phase(tiny_spec(tmp_path, phase=2, epochs=2))
    res = E.train_phase(tiny_spec(tmp_path, phase=2, epochs=4, lr_decoder=2e-2))
    expected = [1e-2 * E.lr_factor(0, "cosine", 2), 1e-2 * E.lr_factor(1, "cosine", 2),
                2e-2 * E.lr_factor(2, "cosine", 4), 2e-2 * E.lr_factor(3, "cosine", 4)]
    assert [r["lr_decoder"] for r in res.history] == pytest.approx(expected)


def test_phase2_starts_over_when_phase1_trained_further(tmp_path, capsys):
    E.train_phase(tiny_spec(tmp_path, epochs=1))
    E.train_phase(tiny_spec(tmp_path, phase=2, epochs=1))
    E.train_phase(tiny_spec(tmp_path, epochs=2))  # phase 1 improves: a new best_phase1.pth
    res = E.train_phase(tiny_spec(tmp_path, phase=2, epochs=2))
    assert "phase 2 starts over from it" in capsys.readouterr().out
    assert [r["epoch"] for r in res.history] == [1, 2]
    E.train_phase(tiny_spec(tmp_path, phase=2, epochs=3))  # unchanged phase 1: a plain resume
    assert "Resuming from epoch 2" in capsys.readouterr().out


def test_phase2_without_phase1_checkpoint_says_so(tmp_path):
    with pytest.raises(C.CheckpointError, match="run phase 1 first"):
        E.train_phase(tiny_spec(tmp_path, phase=2, epochs=1))


def test_a_nonfinite_loss_skips_the_step_and_is_counted(tmp_path):
    # item 3 is NaN: the optimiser step containing it is skipped, the weights stay finite
    res = E.train_phase(tiny_spec(tmp_path, epochs=2, data={"nan_indices": (3,)}))
    assert [r["nonfinite_steps"] for r in res.history] == [1, 1]
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
    assert all(torch.isfinite(w).all() for w in weights(res.latest_checkpoint).values())


def test_repeated_nonfinite_steps_stop_training_and_keep_the_last_good_checkpoint(tmp_path):
    spec = tiny_spec(tmp_path, epochs=5, max_nonfinite_steps=2, data={"nan_from_epoch": 2})
    with pytest.raises(phases_mod.TrainingDivergedError, match="2 optimiser steps in a row.*latest_phase1.pth"):
        E.train_phase(spec)
    ckpt = C.load_checkpoint(spec.latest_path)
    assert ckpt["epoch"] == 2
    assert all(torch.isfinite(w).all() for w in ckpt["model_state_dict"].values())


def test_fp16_with_grad_scaler_runs_and_saves_scaler_state(tmp_path):
    res = E.train_phase(tiny_spec(tmp_path, epochs=1, precision="fp16"))
    ckpt = C.load_checkpoint(res.latest_checkpoint)
    assert ckpt["precision"] == "fp16" and ckpt["scaler_state_dict"]  # an enabled scaler has a state


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch, capsys):
    def broken(module):
        def run(x):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    res = E.train_phase(tiny_spec(tmp_path, epochs=1, use_compile=True))
    assert "torch.compile failed (RuntimeError: no compiler here); training without compile" in capsys.readouterr().out
    assert res.epochs_done == 1


def test_early_stopping_and_curves(tmp_path):
    spec = dataclasses.replace(tiny_spec(tmp_path, epochs=10, patience=2, min_delta=1e9), plot=True)
    res = E.train_phase(spec)
    assert res.stop_reason == "early_stopping" and res.epochs_done == 3 and res.best_epoch == 1
    assert res.curves_path.exists() and res.curves_path.stat().st_size > 10_000


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, capfd):
    # min_delta so large that only the first epoch "improves": early stopping after epoch 3.
    # Item 3 is NaN: only the rank that draws it sees a non-finite loss, yet both must skip that step.
    common = dict(epochs=10, patience=2, min_delta=1e9, grad_accum_target=4, lr_decoder=3e-2,
                  data={"nan_indices": (3,)})
    single = T.launch_training(tiny_spec(tmp_path / "one", batch_size=4, **common), n_gpus=1)
    ddp = T.launch_training(tiny_spec(tmp_path / "two", batch_size=2, **common), n_gpus=2)
    out = capfd.readouterr().out
    assert "[rank 1] phase 1 left the loop after epoch 3 (early_stopping)" in out
    assert single.epochs_done == ddp.epochs_done == 3 and ddp.stop_reason == "early_stopping"
    a, b = weights(single.latest_checkpoint), weights(ddp.latest_checkpoint)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    for ra, rb in zip(single.history, ddp.history):
        assert ra["nonfinite_steps"] == rb["nonfinite_steps"] == 1
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_ddp_divergence_stops_every_rank_and_raises_in_the_launcher(tmp_path):
    spec = tiny_spec(tmp_path, epochs=5, max_nonfinite_steps=2, data={"nan_from_epoch": 1})
    with pytest.raises(phases_mod.TrainingDivergedError, match="2 optimiser steps in a row"):
        T.launch_training(spec, n_gpus=2)
    assert C.load_checkpoint(spec.latest_path)["epoch"] == 1


@pytest.mark.parametrize("launcher", ["srun", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_cli_joins_a_job_started_by_srun_or_torchrun(tmp_path, launcher):
    spec = tiny_spec(tmp_path, epochs=3, batch_size=2)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(T.spec_to_json(spec))
    port = str(T._free_port())
    procs = []
    for rank in range(2):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
            env.pop(key, None)
        if launcher == "srun":
            env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank))
        else:
            env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen(_train_cmd(spec_path), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "phase 1 epoch   3/3" in outs[0] and "[rank 1] phase 1 left the loop after epoch 3 (max_epochs)" in outs[1]
    assert C.load_checkpoint(spec.latest_path)["world_size"] == 2


# ----------------------------------------------------------------------------- kills
def _kill_spec(tmp: Path, epochs: int, pad_floats: int = 4_000_000) -> Path:
    # A big frozen buffer: checkpoints of a realistic size, so a write cut in half leaves megabytes behind.
    spec = tiny_spec(tmp, epochs=epochs, model={"pad_floats": pad_floats}, data={"n": 4})
    path = tmp / "spec.json"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(T.spec_to_json(spec))
    return path


def _train_cmd(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "uni_seg.train", "--spec", str(spec_path), "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def _kill_at_point(spec_path: Path, ckpt_dir: Path, at_save: int, point: str = "mid") -> bool:
    """Start training with a kill point (tests/train_kill_point.py) and SIGKILL it once it
    announces that it stands there: during (`point="mid"`: half of the bytes in the temporary
    file) or just after (`"after"`) its `at_save`-th write of the latest checkpoint. With
    `at_save` >= 2 a checkpoint to resume from always exists. True when the kill caught a
    checkpoint write (a temporary file existed). A run that finishes before the point (its
    phase already done) ends by itself."""
    env = {**_env(), "KILL_AT_SAVE": str(at_save), "KILL_POINT": point}
    proc = subprocess.Popen([sys.executable, str(TESTS / "train_kill_point.py"), *_train_cmd(spec_path)[3:]],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("KILL POINT"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    proc.stdout.close()
    return bool(list(ckpt_dir.glob(".*.tmp-*")))  # a write was cut short


def test_sigkill_during_a_checkpoint_write_resumes_from_an_intact_checkpoint(tmp_path):
    spec_path = _kill_spec(tmp_path, epochs=30)
    assert _kill_at_point(spec_path, tmp_path / "checkpoints", at_save=2, point="mid")
    ckpt = C.load_checkpoint(tmp_path / "checkpoints/latest_phase1.pth")  # intact
    spec = T.spec_from_json(spec_path.read_text())
    res = E.train_phase(dataclasses.replace(spec, phase=dataclasses.replace(spec.phase, epochs=ckpt["epoch"] + 1)))
    assert res.epochs_done == ckpt["epoch"] + 1
    assert [r["epoch"] for r in res.history] == list(range(1, ckpt["epoch"] + 2))
    assert not list((tmp_path / "checkpoints").glob(".*.tmp-*"))  # stale temporaries cleaned


def test_killed_after_a_checkpoint_and_resumed_equals_an_uninterrupted_run(tmp_path):
    epochs = 12
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(_kill_spec(ref, epochs)), cwd=ROOT, env=_env(), check=True, capture_output=True)
    work = tmp_path / "killed"
    spec_path = _kill_spec(work, epochs)
    _kill_at_point(spec_path, work / "checkpoints", at_save=3, point="mid")
    killed_at = C.load_checkpoint(work / "checkpoints/latest_phase1.pth")["epoch"]
    assert 2 <= killed_at < epochs  # the run was cut, after a checkpoint: what follows is a resume
    subprocess.run(_train_cmd(spec_path), cwd=ROOT, env=_env(), check=True, capture_output=True)
    a = C.load_checkpoint(ref / "checkpoints/latest_phase1.pth")
    b = C.load_checkpoint(work / "checkpoints/latest_phase1.pth")
    assert strip_timing(a["history"]) == strip_timing(b["history"])
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])


@pytest.mark.slow
def test_sigkill_soak_many_kills_end_identical_to_an_uninterrupted_run(tmp_path):
    epochs, pad = 80, 16_000_000  # 64 MB checkpoints
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(_kill_spec(ref, epochs, pad)), cwd=ROOT, env=_env(), check=True, capture_output=True)
    work = tmp_path / "killed"
    spec_path = _kill_spec(work, epochs, pad)
    rng = random.Random(1234)  # seeded: which kill point comes next, replayable
    kills, mid_writes = 0, 0
    for _ in range(60):
        latest = work / "checkpoints/latest_phase1.pth"
        if latest.exists() and C.load_checkpoint(latest)["epoch"] >= epochs:
            break
        mid_writes += _kill_at_point(spec_path, work / "checkpoints", at_save=rng.randint(2, 4),
                                     point=rng.choice(["mid", "after"]))
        kills += 1
        C.load_checkpoint(latest)  # always intact
    subprocess.run(_train_cmd(spec_path), cwd=ROOT, env=_env(), check=True, capture_output=True)
    print(f"{kills} kills, {mid_writes} of them during a checkpoint write")
    assert kills >= 10 and mid_writes >= 1, (kills, mid_writes)
    a = C.load_checkpoint(ref / "checkpoints/latest_phase1.pth")
    b = C.load_checkpoint(work / "checkpoints/latest_phase1.pth")
    assert strip_timing(a["history"]) == strip_timing(b["history"])
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])


# ----------------------------------------------------------------------------- the real modules
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    """A processed cache of 4 synthetic 128x128 smears at working scale 0.5 (64x64): 3 train, 1 val."""
    from uni_seg import synthetic
    work = tmp_path_factory.mktemp("real")
    synthetic.generate_synthetic_dataset(work / "raw", n_train=4, n_test=1, seed=0, image_size=(128, 128),
                                    cell_diameter=30.0)
    cache_mod.build_processed_cache(work / "raw", work / "processed", working_scale=0.5, val_fraction=0.25, seed=0)
    return work / "processed"


def real_config(processed: Path, out: Path, **params):
    from uni_seg.config import resolve_config

    values = dict(data_dir=str(processed.parent / "raw"), processed_dir=str(processed),
                  checkpoint_dir=str(out / "ckpt"), results_dir=str(out / "results"), crop_size=32, decoder_channels=16, crops_per_image=1,
                  batch_size_phase1=2, batch_size_phase2=2, grad_accum_target=2, epochs_phase1=4, epochs_phase2=2,
                  patience_phase1=10, patience_phase2=10, warmup_epochs=1, restart_period=2, n_gpus=0, num_workers=0)
    values.update(params)
    return resolve_config("demo", **values)


def test_real_model_resume_matches_straight_run(real_cache, tmp_path):
    def spec(out: str, epochs: int) -> phases_mod.TrainSpec:
        cfg = real_config(real_cache, tmp_path / out, epochs_phase1=epochs)
        return dataclasses.replace(T.spec_from_config(cfg, 1, progress=False), plot=False)

    straight = E.train_phase(spec("a", 2))
    E.train_phase(spec("b", 1))
    resumed = E.train_phase(spec("b", 2))
    assert resumed.epochs_done == 2 and strip_timing(resumed.history) == strip_timing(straight.history)
    wa, wb = weights(straight.latest_checkpoint), weights(resumed.latest_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert {"train_np", "train_hv", "train_nc", "val_np"} <= set(straight.history[0])


def test_real_phase2_from_phase1_and_inference_reload(real_cache, tmp_path):
    cfg = real_config(real_cache, tmp_path, epochs_phase1=1, epochs_phase2=1)
    p1 = T.launch_training(T.spec_from_config(cfg, 1, progress=False), n_gpus=0)
    p2 = T.launch_training(T.spec_from_config(cfg, 2, progress=False), n_gpus=0)
    assert p1.curves_path.exists() and p2.curves_path.exists()
    model, meta = C.load_model_from_checkpoint(p2.best_checkpoint, "cpu")
    assert meta["phase"] == 2 and meta["working_scale"] == 0.5 and meta["model_config"]["lora_rank"] == cfg.lora_rank
    assert meta["model_config"]["backbone"] == "vit_tiny" and not model.training
    ckpt = C.load_checkpoint(p2.best_checkpoint)
    assert any("lora_" in k for k in ckpt["model_state_dict"])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out["nc"].shape == (1, cfg.n_classes, 32, 32)
    # another architecture in the same folder is refused, naming the difference
    other = real_config(real_cache, tmp_path, epochs_phase1=2, decoder_channels=8)
    with pytest.raises(C.CheckpointError, match="decoder_channels: checkpoint 16, this run 8"):
        T.launch_training(T.spec_from_config(other, 1, progress=False), n_gpus=0)


def test_cli_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "uni_seg.train", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for option in ("--profile", "--phase", "--param", "--nproc", "torchrun"):
        assert option in out


# ---------------------------------------------------------------- 9. GPUs asked for, GPUs to be had
# Issue 16, faults met trying the project as a new user: the GPUs a run asks for, and no rank left behind.
def test_a_rank_with_one_bound_gpu_uses_that_gpu(monkeypatch):
    from uni_seg import train

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert train.rank_gpu(3) == 0  # srun --gpus-per-task=1: each task sees only its own
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert train.rank_gpu(3) == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="LOCAL_RANK=3"):
        train.rank_gpu(3)


# -------------------------------------------------------------- spawned ranks end with their parent
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a FIFO opened read-write: Linux")
def test_spawned_ranks_exit_when_the_parent_is_killed(tmp_path, read_pids):
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
        pids = read_pids(fifo, set(), 2, exclude=parent.pid)
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


@pytest.mark.parametrize("param, message", [
    (["TILE_SIZE", "100"], "TILE_SIZE=100 must be a multiple of 16"),
    (["RUN_NAME", "2024", "-p", "EPOCHS_PHASE1", "0"], "EPOCHS_PHASE1=0 must be an integer >= 1"),  # 2024: a name
    (["EPOCS_PHASE1", "1"], "did you mean EPOCHS_PHASE1"),
])
def test_cli_parameters_are_checked_by_the_table_before_any_work(tmp_path, capsys, param, message):
    with pytest.raises(SystemExit) as stop:
        T.main(["--profile", "demo", "-p", "RESULTS_DIR", str(tmp_path / "r"), "-p", *param])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "RUN_NAME" not in err, err
    assert not (tmp_path / "r").exists()
