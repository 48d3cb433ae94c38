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
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config("demo", **kwargs)


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

    json.dumps(resolve_config("full").as_dict())


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
                assert name in PROFILES["demo"] or name in ("run_name", "export_images"), name
            else:
                assert COMMON_DEFAULTS[name] == value, name
