"""Fixtures the test modules share: pytest finds them here, so no test module imports another.

* `real_subset`, `bccd_detection`: the folders of the real data beside the checkout, or a skip
  that names where they were looked for (the lookup: tests/real_subset.py);
* `smear`: a synthetic smear of round cells of a given diameter (the cell-size and Segmenter tests);
* `write_external_set`: two synthetic smears with Pascal VOC boxes, a stand-in external set
  (the end-to-end and sweep tests);
* `cache`: a processed cache of 7 synthetic smears, built once per session (the augmentation
  and Dataset tests; read, never written, by them);
* `read_pids`: the pids that child processes announce through a FIFO, so that a kill comes after
  they started, not after a clock (the tests that spawned DDP ranks and CPU workers end with a
  killed parent, in test_train.py and test_data.py).

Plain helper modules stay beside this file where a fixture cannot serve, because another process
or a benchmark imports them by name: stand_ins.py and train_stand_ins.py (models built inside
subprocesses, DDP workers and benchmarks), sweep_stand_ins.py (a notebook kernel), offline_hub.py
and real_subset.py (shared with benchmarks or used at import time), and the scripts subprocesses
run (shard_stand_in_python.py, train_kill_point.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import real_subset as lookup
from uni_seg.cache import build_processed_cache
from uni_seg.synthetic import generate_synthetic_dataset


@pytest.fixture
def real_subset() -> Path:
    """The real BCCD subset's folder (Kaggle layout); skips the test, saying where it looked, when absent."""
    return lookup.require_real_subset()


@pytest.fixture
def bccd_detection() -> Path:
    """The BCCD detection set's folder (JPEGImages/, Annotations/); skips the test when absent."""
    return lookup.require_bccd_detection()


def _smear(diameter: float, shape=(480, 640), touching: bool = False, seed: int = 0, with_mask: bool = False):
    """Pink cells with pale centres on a light background, on a jittered grid (all touching
    their neighbours when `touching`): RGB uint8 (H, W, 3), and with `with_mask` the cells' bool mask."""
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), (235, 232, 240), np.float32)
    r, step = diameter / 2, diameter * (1.0 if touching else 1.6)
    ys, xs = np.indices(shape)
    for cy in np.arange(r + 2, shape[0] - r - 2, step):
        for cx in np.arange(r + 2, shape[1] - r - 2, step):
            cy_j, cx_j = cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)
            d2 = (ys - cy_j) ** 2 + (xs - cx_j) ** 2
            image[d2 <= r * r] = (190, 120, 140)
            image[d2 <= (0.3 * r) ** 2] = (228, 215, 225)  # the pale centre, nearly as light as the background
    cells = image[..., 0] < 230
    image += rng.normal(0, 3, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return (image, cells) if with_mask else image


@pytest.fixture(scope="session")
def smear() -> Callable[..., np.ndarray]:
    """`smear(diameter, shape=(480, 640), touching=False, seed=0, with_mask=False)`: see `_smear`."""
    return _smear


def _write_external_set(folder: Path) -> None:
    """Two synthetic smears with Pascal VOC boxes of their cells: smears from elsewhere for §9."""
    import cv2
    import numpy as np

    from uni_seg.external import instance_boxes
    from uni_seg.synthetic import render_synthetic_smear

    names = {1: "RBC", 2: "WBC", 3: "Platelets"}
    for k in range(2):
        smear = render_synthetic_smear(np.random.default_rng(100 + k), 160, 200, 40.0)
        (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (folder / "Annotations").mkdir(exist_ok=True)
        cv2.imwrite(str(folder / "JPEGImages" / f"s{k}.jpg"), cv2.cvtColor(smear.image, cv2.COLOR_RGB2BGR))
        objects = "".join(
            f"<object><name>{names[int(np.bincount(smear.cls[smear.inst == i]).argmax())]}</name><bndbox>"
            f"<xmin>{x0 + 1:.0f}</xmin><ymin>{y0 + 1:.0f}</ymin><xmax>{x1:.0f}</xmax><ymax>{y1:.0f}</ymax></bndbox></object>"
            for i, (x0, y0, x1, y1) in enumerate(instance_boxes(smear.inst), start=1) if x1 > x0)
        (folder / "Annotations" / f"s{k}.xml").write_text(f"<annotation>{objects}</annotation>")


@pytest.fixture(scope="session")
def write_external_set() -> Callable[[Path], None]:
    """`write_external_set(folder)`: see `_write_external_set`."""
    return _write_external_set


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("targets")
    generate_synthetic_dataset(work / "raw", 5, 2, seed=11, image_size=(200, 260), cell_diameter=40.0)
    build_processed_cache(work / "raw", work / "processed", working_scale=0.5, val_fraction=0.2, seed=0, min_area=20)
    return work / "processed"  # working images are 100 x 130


# ---------------------------------------------------------------- synthetic smears
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Kaggle layout (4 train, 2 test smears), made once per module."""
    from uni_seg.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "smears"
    generate_synthetic_dataset(root, 4, 2, seed=3, image_size=(180, 240), cell_diameter=40.0)
    return root


@pytest.fixture(scope="module")
def boxed_synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """A small synthetic dataset with BBBC041-style class boxes: (raw root, the boxes file)."""
    from uni_seg import synthetic as S

    root = tmp_path_factory.mktemp("boxed") / "raw"
    S.generate_synthetic_dataset(root, 4, 2, seed=3, image_size=(200, 260), cell_diameter=50, n_wbc=(1, 2))
    boxes = S.write_synthetic_class_boxes(root, seed=3, infected=0.3, unboxed=0.15, empty_boxes=2)
    return root, boxes
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


@pytest.fixture(scope="session")
def read_pids() -> Callable[..., set[int]]:
    """`read_pids(fifo, pids, n, exclude, hang_limit=300)`: see `_read_pids`."""
    return _read_pids
