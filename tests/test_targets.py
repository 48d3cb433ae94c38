"""§2 uni_seg.targets: the HV/NP/NC targets of an instance map (the augmentation pipeline is
tested in test_augment.py, the Dataset and its loaders in test_dataset.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from uni_seg.targets import hv_maps, targets_from_instances

ROOT = Path(__file__).resolve().parents[1]


def reference_hv(inst: np.ndarray) -> np.ndarray:
    """HoVer-Net's gen_instance_hv_map, one full-frame mask per instance (slow, obviously right)."""
    out = np.zeros((2, *inst.shape), np.float32)
    for i in np.unique(inst[inst > 0]):
        mask = inst == i
        cy, cx = ndi.center_of_mass(mask)
        cy, cx = int(cy + 0.5), int(cx + 0.5)
        ys, xs = np.nonzero(mask)
        for channel, offset in ((0, (xs - cx).astype(np.float32)), (1, (ys - cy).astype(np.float32))):
            neg, pos = offset < 0, offset > 0
            if neg.any():
                offset[neg] /= -offset[neg].min()
            if pos.any():
                offset[pos] /= offset[pos].max()
            out[channel, ys, xs] = offset
    return out


def label_map(seed: int, h: int = 90, w: int = 110) -> np.ndarray:
    """Overlapping ellipses with gaps in the ids, cells cut by the border, a one-pixel cell and a
    one-pixel-thick line."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(12):
        cy, cx = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5)
        a, b = rng.uniform(4, 14, 2)
        inst[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1] = 3 * k + 2
    inst[0, 0] = 1000
    inst[h - 1, 10:40] = 1001
    return inst


# ---------------------------------------------------------------- targets
@pytest.mark.parametrize("seed", range(6))
def test_hv_maps_match_the_hovernet_reference(seed):
    inst = label_map(seed)
    np.testing.assert_allclose(hv_maps(inst), reference_hv(inst), atol=1e-6)


def test_hv_maps_range_signs_and_background():
    inst = np.zeros((40, 50), np.int32)
    inst[5:26, 10:31] = 7  # 21 x 21 square: centre (15, 20)
    hv = hv_maps(inst)
    assert hv.dtype == np.float32 and hv.shape == (2, 40, 50)
    assert not hv[:, inst == 0].any()
    assert hv[0, 15, 10] == -1 and hv[0, 15, 30] == 1 and hv[0, 15, 20] == 0  # x: left negative
    assert hv[1, 5, 20] == -1 and hv[1, 25, 20] == 1 and hv[1, 15, 20] == 0  # y: top negative
    assert hv.min() >= -1 and hv.max() <= 1
    assert not hv_maps(np.zeros((5, 5), np.int32)).any()


def test_touching_cells_flip_sign_at_their_border():
    inst = np.zeros((20, 40), np.int32)
    inst[5:15, 5:20], inst[5:15, 20:35] = 1, 2
    hv = hv_maps(inst)
    assert hv[0, 10, 19] == 1 and hv[0, 10, 20] == -1


def test_targets_from_instances_shapes_and_dtypes():
    inst = label_map(1)
    cls = np.where(inst > 0, 2, 0).astype(np.uint8)
    cls[0, 1] = 3  # a class on background must not leak into NC
    t = targets_from_instances(inst, cls)
    assert t["np"].dtype == np.float32 and set(np.unique(t["np"]).tolist()) == {0.0, 1.0}
    assert t["hv"].shape == (2, *inst.shape) and t["nc"].dtype == np.int64
    assert (t["nc"] == np.where(inst > 0, 2, 0)).all()
