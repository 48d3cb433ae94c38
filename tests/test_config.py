"""`uni_seg.config` (§0): the parameters table, profiles, explicit parameters and their validation."""

import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from uni_seg import predict as predict_mod
from uni_seg import config
from uni_seg.config import PROFILES, RunConfig, resolve_config
from uni_seg.devices import resolve_precision

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


# ----------------------------------------------------------------- one table of parameters
def parameters_cell_source() -> str:
    nb = nbformat.read(ROOT / "cell_instance_segmentation.ipynb", as_version=4)
    return next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source


def disagreements_with_the_table(source: str) -> list[str]:
    """The lines where a parameters cell's source differs from the table's (a unified diff), [] when equal."""
    import difflib

    from uni_seg.config import parameters_cell

    return list(difflib.unified_diff(source.strip().splitlines(), parameters_cell().strip().splitlines(),
                                     "parameters cell", "uni_seg.config.parameters_cell()", lineterm="", n=0))


def test_the_parameters_cell_is_the_table_written_out():
    """Names, type annotations, literal defaults, `# help` comments and headings, as PARAMETERS declares them."""
    diff = disagreements_with_the_table(parameters_cell_source())
    assert not diff, ("the notebook's parameters cell disagrees with PARAMETERS (§0); after `make sync`, "
                      "`python tools/parameters_cell.py --write` and `make sync` rewrite it:\n" + "\n".join(diff))


@pytest.mark.parametrize("old, new", [
    ("SEED: int = 42", "SEED: int = 43"),  # a default
    ("LORA_RANK: int = 4", "LORA_RANK: float = 4"),  # a type
    ("TILE_SIZE: Optional[int] = None", "TILE_SIZE: Optional[int] = 128"),  # a value the profiles set
    ("# maximum epochs\n", "# most epochs\n"),  # a help comment
    ("USE_COMPILE: bool = False  # torch.compile the model (first epoch slower)\n", ""),  # a parameter left out
])
def test_a_parameters_cell_that_disagrees_with_the_table_is_caught(old, new):
    source = parameters_cell_source()
    assert old in source
    assert disagreements_with_the_table(source.replace(old, new, 1))


def test_runconfig_and_the_profiles_are_made_from_the_table():
    from uni_seg.config import COMMON_DEFAULTS, PARAMETERS, PROFILE_NAMES

    fields = dataclasses.fields(RunConfig)
    assert [f.name for f in fields] == list(PARAMETERS)  # the parameters cell's order
    assert {f.name: f.type for f in fields}["n_gpus"] == "int | None"  # the full profile's None: every GPU
    assert {f.name: f.type for f in fields}["n_classes"] == "int"  # None is derived from CLASS_SCHEME
    assert {f.name: f.type for f in fields}["class_weights"] == "tuple[float, ...] | None"
    assert {f.name: f.type for f in fields}["data_dir"] == "Path"
    assert sorted(PROFILES) == sorted(PROFILE_NAMES)
    assert PROFILES["full"]["epochs_phase1"] == PARAMETERS["epochs_phase1"].default["full"] == 100
    assert "epochs_phase1" not in COMMON_DEFAULTS and COMMON_DEFAULTS["precision"] == "auto"
    assert set(COMMON_DEFAULTS) | set(PROFILES["demo"]) | {"profile", "run_name"} == set(PARAMETERS)
    for profile in PROFILE_NAMES:
        cfg = resolve_config(profile)
        for parameter in PARAMETERS.values():
            default = parameter.default[profile] if parameter.per_profile else parameter.default
            if default is not None and parameter.kind != "path" and parameter.name != "profile":
                assert getattr(cfg, parameter.name) == default, (profile, parameter.name)


def _out_of_bounds(parameter) -> object:
    """A value just outside what `parameter` allows."""
    if parameter.kind == "bool":
        return "yes"
    if parameter.choices:
        return "no such choice"
    if parameter.kind in ("str", "path"):
        return 5
    if parameter.kind == "floats":
        return [1.0, 0.0, 1.0, 1.0]  # the default scheme's 4 classes, one weight not > 0
    if parameter.multiple_of > 1:
        return parameter.multiple_of * 2 + parameter.multiple_of // 2
    bounds = parameter.bounds
    if ".." in bounds:
        return int(bounds.split("..")[1]) + 1
    if bounds.startswith(">="):
        return float(bounds[3:]) - 0.5 if parameter.kind == "float" else int(bounds[3:]) - 1
    if bounds.startswith(">"):
        return float(bounds[2:])
    low, high = (float(v) for v in bounds[1:-1].split(", "))
    return high + 0.5 if bounds.endswith("]") else high


def test_every_bound_and_choice_of_the_table_is_enforced():
    """Each parameter's defaults pass its own checks, and a value just outside them is refused with its name."""
    from uni_seg.config import PARAMETERS, PROFILE_NAMES, parameter_problem

    for parameter in PARAMETERS.values():
        for profile in PROFILE_NAMES:
            default = parameter.default[profile] if parameter.per_profile else parameter.default
            assert parameter_problem(parameter, default) is None, parameter.name
        bad = _out_of_bounds(parameter)
        assert parameter_problem(parameter, bad), (parameter.name, bad)
        if parameter.name != "profile":
            with pytest.raises(ValueError, match=re.escape(f"{parameter.name.upper()}=")):
                resolve_config("demo", **{parameter.name: bad})


@pytest.mark.parametrize("name, value, message", [
    ("working_scale", 5.0, "WORKING_SCALE=5.0 must be a number in (0, 4]"),
    ("working_scale", "0.5", "WORKING_SCALE='0.5' must be a number in (0, 4]"),
    ("seed", -1, "SEED=-1 must be an integer >= 0"),
    ("tile_size", 8, "TILE_SIZE=8 must be an integer >= 16"),
    ("crop_size", 100.0, "CROP_SIZE=100.0 must be an integer >= 16"),
    ("run_name", 2024, "RUN_NAME=2024 must be a string"),
    ("data_dir", 3, "DATA_DIR=3 must be a path"),
    ("class_weights", [1, -2, 3, 4], "CLASS_WEIGHTS=[1, -2, 3, 4] must all be numbers > 0"),
    ("precision", "int8", "PRECISION='int8' is not one of ['auto', 'bf16', 'fp16', 'fp32']"),
])
def test_a_bad_value_is_named_with_what_the_table_allows(name, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config("demo", **{name: value})


def test_precision_choices_come_from_one_constant():
    from uni_seg.config import _CHOICES, PRECISIONS, RESOLVED_PRECISIONS
    from uni_seg.devices import autocast

    assert _CHOICES["precision"] == PRECISIONS and RESOLVED_PRECISIONS == ("bf16", "fp16", "fp32")
    for refuse in (lambda: resolve_precision("int8", torch.device("cpu")),
                   lambda: predict_mod.InferenceSettings(precision="int8")):
        with pytest.raises(ValueError, match=re.escape("'int8' is not one of auto, bf16, fp16, fp32")):
            refuse()
    with pytest.raises(ValueError, match=re.escape("is not one of 'bf16', 'fp16', 'fp32' (resolve 'auto' first)")):
        autocast(torch.device("cpu"), "auto")


def test_command_line_values_are_read_by_the_parameters_types():
    from uni_seg.config import parameter_from_text

    assert parameter_from_text("RUN_NAME", "2024") == "2024"  # a name, not a number
    assert parameter_from_text("DATA_DIR", "None") is None
    assert parameter_from_text("EPOCHS_PHASE1", "60") == 60
    assert parameter_from_text("LR_PHASE1", "1e-4") == 1e-4
    assert parameter_from_text("USE_TTA", "True") is True
    assert parameter_from_text("CLASS_WEIGHTS", "[1, 2.5]") == [1, 2.5]
    assert parameter_from_text("EXPORT_IMAGES", "null") is None
    assert parameter_from_text("EPOCHS_PHASE1", "sixty") == "sixty"  # resolve_config names it as a bad value

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


# -------------------------------------------------------------------- 10. every value checked in §0
def test_every_value_is_checked_when_the_parameters_are_resolved():
    with pytest.raises(ValueError) as error:
        config.resolve_config("demo", epochs_phase1=-1, batch_size_phase2=0, lr_phase1=0.0, tile_overlap=128,
                              use_tta="yes", export_images=-2)
    message = str(error.value)
    for part in ("EPOCHS_PHASE1=-1", "BATCH_SIZE_PHASE2=0", "LR_PHASE1=0.0", "TILE_OVERLAP=128", "USE_TTA='yes'",
                 "EXPORT_IMAGES=-2"):
        assert part in message  # all at once


