"""uni_seg.synthetic: the generator replaces only the files its record lists (the drawing itself
is tested with the dataset readers in test_data.py); synthetic smears only where they were asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uni_seg import synthetic
from uni_seg import synthetic as S
from uni_seg.data import DataError

SMALL = dict(image_size=(48, 64), cell_diameter=16.0)


def generated(root: Path, n_train: int = 2, n_test: int = 1, seed: int = 0) -> Path:
    S.generate_synthetic_dataset(root, n_train, n_test, seed=seed, **SMALL)
    return root


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_the_record_lists_every_file_the_generator_wrote(tmp_path):
    root = generated(tmp_path / "smears")
    record = json.loads((root / S.SYNTHETIC_RECORD).read_text())
    assert record["files"] == S._synthetic_files(record)
    assert sorted(record["files"]) == [f for f in files_under(root) if f != S.SYNTHETIC_RECORD]


def test_regeneration_refuses_and_keeps_a_users_file_in_the_generators_folders(tmp_path):
    root = generated(tmp_path / "smears")
    before = {f: (root / f).read_bytes() for f in files_under(root)}
    (root / "train/original/my_slide.png").write_bytes(b"the user's own image")
    with pytest.raises(FileExistsError, match=r"train/original/my_slide\.png: in the synthetic dataset's folders"):
        S.generate_synthetic_dataset(root, 3, 1, seed=1, **SMALL)  # other parameters: the old files would go
    assert (root / "train/original/my_slide.png").read_bytes() == b"the user's own image"
    assert {f: (root / f).read_bytes() for f in before} == before  # nothing deleted before the refusal


def test_regeneration_replaces_only_the_recorded_files(tmp_path):
    root = generated(tmp_path / "smears", n_train=3)
    (root / "notes.txt").write_text("mine")
    (root / "classes").mkdir()
    (root / "classes/my_boxes.json").write_text("[]")
    S.generate_synthetic_dataset(root, 1, 1, seed=1, **SMALL)
    assert sorted(p.name for p in (root / "train/original").iterdir()) == ["synth_train_0000.png"]
    assert (root / "notes.txt").read_text() == "mine" and (root / "classes/my_boxes.json").read_text() == "[]"


def test_a_record_from_before_the_file_list_still_names_its_files(tmp_path):
    root = generated(tmp_path / "smears", n_train=3)
    record = json.loads((root / S.SYNTHETIC_RECORD).read_text())
    del record["files"]
    (root / S.SYNTHETIC_RECORD).write_text(json.dumps(record))
    S.generate_synthetic_dataset(root, 1, 1, seed=1, **SMALL)
    assert sorted(p.name for p in (root / "train/mask").iterdir()) == ["synth_train_0000.png"]


def test_a_generation_killed_half_way_is_replaced_by_the_next_call(tmp_path):
    root = generated(tmp_path / "smears")
    (root / "test/truth/synth_test_0000.npz").unlink()  # as a kill before the last file left it
    S.generate_synthetic_dataset(root, 2, 1, seed=0, **SMALL)
    assert (root / "test/truth/synth_test_0000.npz").is_file()


def test_class_boxes_keep_a_users_file_and_go_into_the_record(tmp_path):
    root = generated(tmp_path / "smears")
    target = root / S.SYNTHETIC_CLASS_BOXES
    target.parent.mkdir()
    target.write_text("the user's boxes")
    with pytest.raises(FileExistsError, match=r"bbbc041_boxes\.json: not written by the generator"):
        S.write_synthetic_class_boxes(root, seed=0)
    assert target.read_text() == "the user's boxes"
    target.unlink()
    assert S.write_synthetic_class_boxes(root, seed=0) == target
    assert S.SYNTHETIC_CLASS_BOXES in json.loads((root / S.SYNTHETIC_RECORD).read_text())["files"]
    S.write_synthetic_class_boxes(root, seed=0)  # ours now: replaced
    S.generate_synthetic_dataset(root, 1, 1, seed=1, **SMALL)  # boxes of the old smears: removed with them
    assert not target.exists()
    with pytest.raises(FileNotFoundError, match="no synthetic dataset here"):
        S.write_synthetic_class_boxes(tmp_path / "elsewhere", seed=0)


# ----------------------------------------------- 8. synthetic smears only where they were asked for
# Issue 16, faults met trying the project as a new user: synthetic smears only where they were asked for.
def test_an_explicit_data_dir_without_a_dataset_is_an_error_not_synthetic_data(tmp_path):
    typo = tmp_path / "data" / "rwa"
    with pytest.raises(DataError, match="holds no dataset.*original,mask.*SYNTHETIC_IMAGES"):
        synthetic.synthetic_data_wanted(typo, 16, data_dir_given=True, synthetic_images_given=False)
    assert not typo.exists()
    assert synthetic.synthetic_data_wanted(typo, 16, data_dir_given=True, synthetic_images_given=True)
    assert synthetic.synthetic_data_wanted(tmp_path / "default", 16, data_dir_given=False, synthetic_images_given=False)
    with pytest.raises(DataError, match="holds no dataset"):  # the full profile makes none
        synthetic.synthetic_data_wanted(typo, 0, data_dir_given=False, synthetic_images_given=False)
