"""`uni_seg.known_maps`: the maps a perfect model gives for known cells, degraded as a trained
model's are, and the annotators' separation lines given back to the cells."""
from __future__ import annotations

import numpy as np
from scenes import disk_scene
from scipy import ndimage as ndi

from uni_seg.known_maps import close_separation_lines, degrade_maps, true_maps
from uni_seg.targets import hv_maps


def test_true_maps_are_the_cells_and_their_hv_targets():
    inst = disk_scene()
    np_map, hv = true_maps(inst)
    assert np_map.dtype == hv.dtype == np.float32
    assert np_map.shape == inst.shape and hv.shape == (2, *inst.shape)
    np.testing.assert_array_equal(np_map, (inst > 0).astype(np.float32))
    np.testing.assert_array_equal(hv, hv_maps(inst))


def test_degrade_maps_blurs_and_noises_within_range_and_repeats_with_the_seed():
    np_map, hv = true_maps(disk_scene())
    first = degrade_maps(np_map, hv, blur=2.0, noise=0.1, rng=np.random.default_rng(3))
    again = degrade_maps(np_map, hv, blur=2.0, noise=0.1, rng=np.random.default_rng(3))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np_noisy, hv_noisy = first
    assert np_noisy.shape == np_map.shape and hv_noisy.shape == hv.shape
    assert np_noisy.min() >= 0 and np_noisy.max() <= 1 and hv_noisy.min() >= -1 and hv_noisy.max() <= 1
    assert not np.array_equal(np_noisy, np_map)
    assert np.abs(np_noisy - np_map).mean() < 0.2  # degraded, not destroyed


def test_make_touching_closes_separation_lines_only():
    inst = np.zeros((40, 60), np.int32)
    inst[5:35, 5:28] = 1
    inst[5:35, 31:55] = 2  # a 3 px line between them
    out = close_separation_lines(inst)
    assert (out[6:34, 28:31] > 0).all()  # the line is gone
    assert (out[0:5] == 0).all() and (out[:, 56:] == 0).all()  # open background stays background
    assert ndi.label(out > 0)[1] == 1
