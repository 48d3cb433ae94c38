"""§0: profiles, explicit parameters, validation, device/precision choice."""

import dataclasses
import re
from pathlib import Path

import nbformat
import pytest
import torch

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
