"""§0: profiles, explicit parameters, validation, device/precision choice."""

import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from uni_seg import files as files_mod
from uni_seg import config
from uni_seg.config import PROFILES, RunConfig, resolve_config, resolve_precision

ROOT = Path(__file__).resolve().parent.parent


def parameter_cell_names() -> list[str]:
    nb = nbformat.read(ROOT / "cell_instance_segmentation.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return re.findall(r"^([A-Z][A-Z0-9_]*)\s*:", cell.source, flags=re.MULTILINE)


def test_every_parameter_is_a_config_field_and_back():
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    names = {n.lower() for n in parameter_cell_names()}
    assert names == fields


def test_every_parameter_has_a_type_and_a_comment():
    nb = nbformat.read(ROOT / "cell_instance_segmentation.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for line in cell.source.splitlines():
        if re.match(r"^[A-Z][A-Z0-9_]*\s*[:=]", line):
            assert re.match(r"^[A-Z][A-Z0-9_]*: [\w\[\], ]+ = .+  # \S", line), f"undocumented: {line}"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_resolves_on_its_own(profile):
    cfg = resolve_config(profile)
    assert cfg.profile == profile and cfg.run_name == profile
    assert isinstance(cfg.data_dir, Path)


def test_explicit_parameters_win_and_none_means_profile_default():
    cfg = resolve_config("demo", crop_size=96, backbone=None)
    assert cfg.crop_size == 96
    assert cfg.backbone == PROFILES["demo"]["backbone"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_size": 100}, "CROP_SIZE=100 must be a multiple of 16"),
        ({"backbone": "resnet"}, "BACKBONE='resnet'"),
        ({"typo_param": 1}, "TYPO_PARAM"),
        ({"class_weights": [1.0, 2.0]}, "CLASS_WEIGHTS has 2 weights"),
        ({"val_fraction": 1.5}, "VAL_FRACTION"),
        ({"weights": "/no/such/weights.bin"}, "WEIGHTS='/no/such/weights.bin' is not one of ['auto', 'hub'"),
        ({"aug_hed": 1.5}, "AUG_HED=1.5 must be a number in [0, 1]"),
        ({"aug_hue": 0.7}, "AUG_HUE=0.7 must be a number in [0, 0.5]"),
        ({"aug_jpeg": 0}, "AUG_JPEG=0 must be an integer in 1..100"),
        ({"run_baseline": "yes"}, "RUN_BASELINE='yes' must be True or False"),
        ({"external_eval_dir": "/no/such/folder"}, "EXTERNAL_EVAL_DIR='/no/such/folder' is not a folder"),
        ({"external_cell_diameter": -3}, "EXTERNAL_CELL_DIAMETER=-3 must be a number > 0"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config("demo", **kwargs)


def test_backbone_choices_are_the_registry_and_weights_take_a_path(tmp_path):
    """BACKBONE is checked here without importing torch; its choices must be §3's registry."""
    from uni_seg.backbones import BACKBONES
    from uni_seg.config import _CHOICES

    assert _CHOICES["backbone"] == tuple(BACKBONES)
    assert resolve_config("full", backbone="dinobloom-b").backbone == "dinobloom-b"
    (tmp_path / "uni").mkdir()
    (tmp_path / "uni" / "pytorch_model.bin").write_bytes(b"")
    for weights in (tmp_path / "uni", tmp_path / "uni" / "pytorch_model.bin"):
        assert resolve_config("full", weights=str(weights)).weights == str(weights)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=re.escape("notes.txt' is a file but not a weights file (.safetensors, .bin")):
        resolve_config("full", weights=str(tmp_path / "notes.txt"))


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="PROFILE='laptop'"):
        resolve_config("laptop")


def test_precision_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="PRECISION"):
        resolve_precision("int8", cpu)


def test_config_is_json_ready():
    import json

    values = resolve_config("full").as_dict()
    assert json.loads(json.dumps(values)) == values  # every value survives a JSON round trip unchanged


def test_parameter_cell_defaults_agree_with_the_library_defaults():
    """A parameter shown with a value in the notebook has that value when resolved from a script."""
    import ast

    from uni_seg.config import COMMON_DEFAULTS

    nb = nbformat.read(ROOT / "cell_instance_segmentation.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.AnnAssign):
            name, value = node.target.id.lower(), ast.literal_eval(node.value)
            if name == "profile":
                continue
            if value is None:
                # None: the profile's value, the run's name, or a default of None itself
                assert name in PROFILES["demo"] or name == "run_name" or COMMON_DEFAULTS.get(name, 0) is None, name
            else:
                assert COMMON_DEFAULTS[name] == value, name


def test_issue21_case5_a_gpu_that_is_not_there_is_named_as_asked():
    from uni_seg.config import DeviceUnavailable, resolve_device

    missing = f"cuda:{torch.cuda.device_count() + 7}"
    with pytest.raises(DeviceUnavailable, match=f"device='{missing}'"):
        resolve_device(missing)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="device='cuda' was asked for but no GPU is visible"):
            resolve_device("cuda")
    assert issubclass(DeviceUnavailable, ValueError)  # a command reports it in one line


# ------------------------------------------------------- 6. a mistyped parameter name stops the run
# Issue 16, faults met trying the project as a new user: every parameter and value checked in one line before any work.
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


# ---------------------------------------------------------------- 9. GPUs asked for, GPUs to be had
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


# -------------------------------------------------------------------- 10. every value checked in §0
def test_every_value_is_checked_when_the_parameters_are_resolved():
    with pytest.raises(ValueError) as error:
        config.resolve_config("demo", epochs_phase1=-1, batch_size_phase2=0, lr_phase1=0.0, tile_overlap=128,
                              use_tta="yes", export_images=-2)
    message = str(error.value)
    for part in ("EPOCHS_PHASE1=-1", "BATCH_SIZE_PHASE2=0", "LR_PHASE1=0.0", "TILE_OVERLAP=128", "USE_TTA='yes'",
                 "EXPORT_IMAGES=-2"):
        assert part in message  # all at once


# ------------------------------------------------------- weights that do not fit, named in one line
def test_weights_that_do_not_fit_name_the_first_few_tensors_and_the_count():
    expected = {f"blocks.{i}.w": torch.zeros(4, 4) for i in range(50)}
    given = {f"blocks.{i}.w": torch.zeros(8, 4) for i in range(48)} | {"extra": torch.zeros(1)}
    message = files_mod.state_dict_mismatch(expected, given)
    assert message.startswith("48 key(s) of another shape (first: blocks.0.w (8, 4) in the file, (4, 4) in the model")
    assert "2 missing (first: blocks.48.w, blocks.49.w)" in message and "1 unexpected (first: extra)" in message
    assert message.count("blocks.") <= 5 and "\n" not in message
    assert files_mod.state_dict_mismatch(expected, expected) == ""
