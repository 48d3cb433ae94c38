"""`uni_seg.tuning`: the post-processing search finds a setting that recovers known cells."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scenes import disk_scene

from uni_seg.files import ATOMIC_TEMP_GLOB
from uni_seg.known_maps import true_maps
from uni_seg.postproc import DEFAULT_POSTPROC_PARAMS, load_postproc_params, save_postproc_params
from uni_seg.tuning import tune_postproc


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
