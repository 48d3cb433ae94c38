"""`uni_seg.tuning`: the post-processing search finds a setting that recovers known cells."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scenes import disk_scene

from uni_seg.files import ATOMIC_TEMP_GLOB
from uni_seg.known_maps import true_maps
from uni_seg.postproc import DEFAULT_POSTPROC_PARAMS, load_postproc_params, save_postproc_params
from uni_seg.tuning import EDGE_SLIVER_FRACTIONS, edge_sliver_areas, tune_postproc


# --------------------------------------------------------------------------- tuning and params file
def test_tune_postproc_finds_a_setting_that_recovers_the_cells(tmp_path):
    inst = disk_scene()
    np_map, hv = true_maps(inst)
    np_noisy = np.clip(np_map * 0.7 + 0.15, 0, 1).astype(np.float32)  # foreground at 0.85, background 0.15
    grid = {"fg_threshold": [0.1, 0.5], "marker_threshold": [0.05, 0.1]}
    best, table = tune_postproc([np_noisy], [hv], [inst], grid=grid)
    assert len(table) == 4 and table[0]["pq"] >= table[-1]["pq"]
    assert best.fg_threshold == 0.5 and table[0]["pq"] > 0.99
    assert set(best.as_dict()) == set(DEFAULT_POSTPROC_PARAMS.as_dict())
    path = save_postproc_params(tmp_path / "results" / "postproc_params.json", best, table[0]["pq"], grid=grid)
    doc = json.loads(path.read_text())
    assert doc["score"]["pq"] == pytest.approx(table[0]["pq"]) and doc["params"] == best.as_dict()
    assert load_postproc_params(path) == best
    assert not list(path.parent.glob(ATOMIC_TEMP_GLOB))


def test_tuning_learns_the_annotators_convention_for_slivers_on_the_edge():
    """Masks that leave out the cells cut off by the image's edge tune the sliver rule on;
    masks that draw them keep it off (the same maps, the default grid)."""
    cells = ((60, 60, 18), (60, 140, 18), (110, 100, 18), (-12, 100, 18), (80, -12, 18), (150, 40, 18))
    drawn = disk_scene((160, 200), cells)
    np_map, hv = true_maps(drawn)  # the model sees every cell, slivers included
    left_out = np.where(np.isin(drawn, [4, 5]), 0, drawn)  # annotators who leave out the two slivers
    areas = np.bincount(drawn.ravel())
    assert max(areas[4], areas[5]) < 0.25 * np.median(areas[[1, 2, 3, 6]])  # slivers, by the left-out masks' median
    assert edge_sliver_areas([left_out]) == [round(f * np.median(areas[[1, 2, 3, 6]])) for f in EDGE_SLIVER_FRACTIONS]
    best, table = tune_postproc([np_map], [hv], [left_out])
    assert len(table) == 27 * 4 and best.min_edge_cell_area > max(areas[4], areas[5]) and table[0]["pq"] > 0.99
    best, table = tune_postproc([np_map], [hv], [drawn])
    assert best.min_edge_cell_area == 0 and table[0]["pq"] > 0.99
