"""The analysis scripts of bench/ (not their timings): run as a user runs them, on data built in the test."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _smear_with_an_undrawn_platelet(root: Path) -> None:
    """A Kaggle-layout folder, one pair in each partition: four drawn red cells, one drawn
    platelet-sized cell and one dark platelet-sized blob the mask leaves out."""
    image = np.full((300, 300, 3), (225, 228, 230), np.uint8)  # BGR, pale background
    mask = np.zeros((300, 300), np.uint8)
    for centre in ((60, 60), (60, 200), (200, 60), (200, 200)):
        cv2.circle(image, centre, 35, (190, 150, 150), -1)
        cv2.circle(mask, centre, 35, 255, -1)
    cv2.circle(image, (130, 130), 12, (190, 150, 150), -1)
    cv2.circle(mask, (130, 130), 12, 255, -1)
    cv2.circle(image, (255, 130), 12, (140, 60, 120), -1)  # stained, not drawn
    for partition in ("train", "test"):
        for folder, array in (("original", image), ("mask", mask)):
            (root / partition / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / partition / folder / f"smear_{partition}.png"), array)


def _undrawn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "undrawn_objects.py"), *args],
                          cwd=ROOT, capture_output=True, text=True)


def test_undrawn_objects_counts_drawn_and_undrawn_platelet_sized_objects(tmp_path):
    _smear_with_an_undrawn_platelet(tmp_path / "data")
    sheet = tmp_path / "sheet.png"
    result = _undrawn(str(tmp_path / "data"), "--sheet", str(sheet))
    assert result.returncode == 0, result.stderr
    assert "2 images; 10 drawn cells inside the image" in result.stdout
    assert "2 drawn; 2 stained objects outside every drawn cell, in 2 images" in result.stdout
    assert cv2.imread(str(sheet)).shape == (200, 1200, 3)  # two crops in a row of six


def test_undrawn_objects_never_writes_over_a_file(tmp_path):
    _smear_with_an_undrawn_platelet(tmp_path / "data")
    sheet = tmp_path / "mine.png"
    sheet.write_bytes(b"not yours")
    result = _undrawn(str(tmp_path / "data"), "--sheet", str(sheet))
    assert result.returncode != 0 and "exists" in result.stderr and sheet.read_bytes() == b"not yours"


def test_undrawn_objects_names_a_folder_without_a_dataset(tmp_path):
    result = _undrawn(str(tmp_path))
    assert result.returncode != 0 and "partition folder missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_undrawn_objects_names_a_mask_that_does_not_fit_its_image(tmp_path):
    _smear_with_an_undrawn_platelet(tmp_path / "data")
    mask = tmp_path / "data" / "test" / "mask" / "smear_test.png"
    cv2.imwrite(str(mask), np.zeros((100, 300), np.uint8))
    result = _undrawn(str(tmp_path / "data"))
    assert result.returncode != 0 and "smear_test.png" in result.stderr and "does not match" in result.stderr
