"""`uni_seg.tuning`: the post-processing search finds a setting that recovers known cells."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scenes import disk_scene

from uni_seg.classes import class_scheme
from uni_seg.files import ATOMIC_TEMP_GLOB
from uni_seg.known_maps import true_maps
from uni_seg.postproc import (DEFAULT_POSTPROC_PARAMS, SplitPrediction, load_postproc_params, save_postproc_params)
from uni_seg.tuning import (EDGE_EXTENSION_ROUNDS, EDGE_SLIVER_FRACTIONS, INFECTED_VOTE_WEIGHTS, edge_sliver_areas,
                             extended_axes, tune_infected_vote, tune_postproc)


# --------------------------------------------------------------------------- tuning and params file
def test_tune_postproc_scores_the_cells_the_stain_rules_give_when_given_the_images():
    """Maps that cut a white cell in three lobes, a truth that draws it whole: the search scores
    what the post-processing will give, so with the images the lobes are one cell, as in use."""
    lobed = disk_scene((80, 260), ((30, 30, 12), (30, 52, 12), (50, 41, 12), (30, 100, 14), (30, 126, 14),
                                   (60, 200, 14), (30, 230, 14), (62, 120, 14)))
    whole = np.where(np.isin(lobed, [2, 3]), 1, lobed)
    image = np.full((80, 260, 3), (235, 230, 225), np.uint8)
    image[lobed > 0] = (205, 120, 125)
    image[np.isin(lobed, [1, 2, 3])] = (115, 60, 190)
    np_map, hv = true_maps(lobed)
    grid = {"fg_threshold": [0.5]}
    _, without = tune_postproc([np_map], [hv], [whole], grid=grid, extend_edges=0)
    _, with_images = tune_postproc([np_map], [hv], [whole], grid=grid, extend_edges=0, images=[image])
    assert with_images[0]["pq"] > 0.99 > without[0]["pq"]
    with pytest.raises(ValueError, match="2 images for 1 maps"):
        tune_postproc([np_map], [hv], [whole], grid=grid, images=[image, image])


def test_tune_postproc_finds_a_setting_that_recovers_the_cells(tmp_path):
    inst = disk_scene()
    np_map, hv = true_maps(inst)
    np_noisy = np.clip(np_map * 0.7 + 0.15, 0, 1).astype(np.float32)  # foreground at 0.85, background 0.15
    grid = {"fg_threshold": [0.1, 0.5], "marker_threshold": [0.05, 0.1]}
    best, table = tune_postproc([np_noisy], [hv], [inst], grid=grid, extend_edges=0)
    assert len(table) == 4 and table[0]["pq"] >= table[-1]["pq"]
    assert best.fg_threshold == 0.5 and table[0]["pq"] > 0.99
    assert set(best.as_dict()) == set(DEFAULT_POSTPROC_PARAMS.as_dict())
    path = save_postproc_params(tmp_path / "results" / "postproc_params.json", best, table[0]["pq"], grid=grid)
    doc = json.loads(path.read_text())
    assert doc["score"]["pq"] == pytest.approx(table[0]["pq"]) and doc["params"] == best.as_dict()
    assert load_postproc_params(path) == best
    assert not list(path.parent.glob(ATOMIC_TEMP_GLOB))


def test_search_goes_past_the_edge_of_its_grid_when_the_best_lies_there():
    """Both foreground thresholds of the grid are under the background's probability (0.15), so
    the whole field is one blob; the search extends the axis upwards until it separates the
    cells, and stops once the best lies inside its grid."""
    inst = disk_scene()
    np_map, hv = true_maps(inst)
    np_noisy = np.clip(np_map * 0.7 + 0.15, 0, 1).astype(np.float32)
    grid = {"fg_threshold": [0.05, 0.1], "marker_threshold": [0.05, 0.1]}
    held, held_table = tune_postproc([np_noisy], [hv], [inst], grid=grid, extend_edges=0)
    assert held_table[0]["pq"] < 0.7  # both thresholds under the background: one blob around the cells
    best, table = tune_postproc([np_noisy], [hv], [inst], grid=grid)
    assert best.fg_threshold > 0.15 and table[0]["pq"] > 0.99
    fg_values = sorted({row["fg_threshold"] for row in table})
    assert {0.05, 0.1} <= set(fg_values) and len(fg_values) <= 2 + 2 * EDGE_EXTENSION_ROUNDS  # ties: both ways
    assert len(table) == len({(row["fg_threshold"], row["marker_threshold"]) for row in table})  # none scored twice
    inside, inside_table = tune_postproc([np_noisy], [hv], [inst], grid={"fg_threshold": [0.1, 0.5, 0.9]})
    assert inside.fg_threshold == 0.5 and len(inside_table) == 3  # the best inside: nothing added
    with pytest.raises(ValueError, match="extend_edges"):
        tune_postproc([np_noisy], [hv], [inst], grid=grid, extend_edges=-1)


def test_extended_axes_steps_past_the_best_end_and_respects_the_parameters_ranges():
    base = DEFAULT_POSTPROC_PARAMS
    grown = extended_axes({"marker_threshold": [0.03, 0.05, 0.08], "min_edge_cell_area": [0, 400, 800],
                           "hv_smooth_sigma": [2.0, 3.0, 4.0], "fg_threshold": [0.8, 0.9, 1.0]},
                          [{"marker_threshold": 0.03, "min_edge_cell_area": 800, "hv_smooth_sigma": 3.0,
                            "fg_threshold": 1.0}], base)
    assert grown["marker_threshold"] == [0.03, 0.05, 0.08, 0.01]  # one spacing down
    assert grown["min_edge_cell_area"] == [0, 400, 800, 1200] and isinstance(grown["min_edge_cell_area"][-1], int)
    assert grown["hv_smooth_sigma"] == [2.0, 3.0, 4.0]  # best inside: unchanged
    assert grown["fg_threshold"] == [0.8, 0.9, 1.0]  # 1.1 is out of range
    halved = extended_axes({"marker_threshold": [0.01, 0.03]}, [{"marker_threshold": 0.01}], base)
    assert halved["marker_threshold"] == [0.01, 0.03, 0.005]  # a step would reach zero: half the end
    at_zero = extended_axes({"min_edge_cell_area": [0, 500]}, [{"min_edge_cell_area": 0}], base)
    assert at_zero == {"min_edge_cell_area": [0, 500]}  # nothing below zero
    one_value = extended_axes({"sobel_ksize": [5], "hv_smooth_sigma": [1.0, 2.0]},
                              [{"sobel_ksize": 5, "hv_smooth_sigma": 2.0}], base)
    assert one_value == {"sobel_ksize": [5], "hv_smooth_sigma": [1.0, 2.0, 3.0]}
    tied = extended_axes({"fg_threshold": [0.3, 0.5]}, [{"fg_threshold": 0.3}, {"fg_threshold": 0.5}], base)
    assert tied == {"fg_threshold": [0.3, 0.5, 0.1, 0.7]}  # tied at both ends: both ways


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
    assert len(table) >= 27 * 4 and best.min_edge_cell_area > max(areas[4], areas[5]) and table[0]["pq"] > 0.99
    best, table = tune_postproc([np_map], [hv], [drawn])
    assert best.min_edge_cell_area == 0 and table[0]["pq"] > 0.99


def _parasite_images(n_images: int = 3) -> list[SplitPrediction]:
    """Validation images of the bbbc041 scheme: 5 discs each, one infected, and a model that
    leans towards "infected": the true infected cell at 0.8, one uninfected cell at 0.55
    (0.45 uninfected), the others at 0.2."""
    cells = ((30, 30, 12), (30, 80, 12), (80, 30, 12), (80, 80, 12), (55, 130, 12))
    predictions = []
    for k in range(n_images):
        inst = disk_scene((110, 160), cells)
        np_map, hv = true_maps(inst)
        true_cls = np.where(inst > 0, 1, 0).astype(np.int8)
        true_cls[inst == 1] = 2
        nc = np.zeros((4, *inst.shape), np.float32)
        infected = np.select([inst == 1, inst == 2], [0.8, 0.55], 0.2).astype(np.float32)
        nc[2] = np.where(inst > 0, infected, 0.0)
        nc[1] = np.where(inst > 0, 1 - infected, 0.0)
        nc[0] = (inst == 0)
        predictions.append(SplitPrediction(f"img{k}", None, inst, true_cls, inst, np.zeros(6, np.int64), None,
                                           np.ones(6, np.float32), {"np": np_map, "hv": hv, "nc": nc}))
    return predictions


def test_infected_vote_weight_is_tuned_on_the_parasitemia():
    scheme = class_scheme("bbbc041")
    params, table = tune_infected_vote(_parasite_images(), DEFAULT_POSTPROC_PARAMS, scheme)
    # weight 1 calls 2 of 5 infected (40 %, truth 20 %); 0.5 tips the 0.55 cell back (0.275 < 0.45), not the 0.8 one
    assert params.class_vote_weights == (1.0, 1.0, 0.5, 1.0)
    assert table[0]["infected_weight"] == 0.5 and table[0]["parasitemia_mae"] == pytest.approx(0.0)
    by_weight = {row["infected_weight"]: row for row in table}
    assert by_weight[1.0]["parasitemia_mae"] == pytest.approx(0.2) and by_weight[1.0]["infected_cells"] == 6
    assert by_weight[0.125]["infected_cells"] == 0  # 0.8 x 0.125 < 0.2: no cell called infected
    json.dumps(table, allow_nan=False)  # goes into results/postproc_params.json as it is
    # a scheme without infected classes, or a model already right, keeps the parameters
    assert tune_infected_vote(_parasite_images(), DEFAULT_POSTPROC_PARAMS, class_scheme("colour")) == (
        DEFAULT_POSTPROC_PARAMS, [])
    right = _parasite_images()
    for p in right:
        p.maps["nc"][2][p.true_inst == 2] = 0.2
        p.maps["nc"][1][p.true_inst == 2] = 0.8
    assert tune_infected_vote(right, DEFAULT_POSTPROC_PARAMS, scheme)[0].class_vote_weights == ()
    with pytest.raises(ValueError, match="keep_maps"):
        tune_infected_vote([right[0].__class__(**{**right[0].__dict__, "maps": None})], DEFAULT_POSTPROC_PARAMS, scheme)


def _leaning_images(infected_p: float, uninfected_p: float, others_p: float = 0.2) -> list[SplitPrediction]:
    """`_parasite_images` with the infected-class probability of the true infected cell set to
    `infected_p`, that of the second cell (uninfected) to `uninfected_p` and that of the other
    three (uninfected) to `others_p`."""
    images = _parasite_images()
    for p in images:
        for cells, prob in (([1], infected_p), ([2], uninfected_p), ([3, 4, 5], others_p)):
            inside = np.isin(p.true_inst, cells)
            p.maps["nc"][2][inside] = prob
            p.maps["nc"][1][inside] = 1 - prob
    return images


def test_infected_vote_search_goes_past_the_lowest_weight():
    """A model so sure of a parasite in an uninfected cell (0.96) that even the lowest weight of
    the grid calls it infected (0.0625 x 0.96 > 0.04): every weight of the grid ties, the search
    goes on from both ends, and a factor of two further down (0.03125) tips the cell back and
    keeps the true one (0.99); 0.015625 only ties, and 0.0078125 loses the true one."""
    scheme = class_scheme("bbbc041")
    params, table = tune_infected_vote(_leaning_images(0.99, 0.96, 0.1), DEFAULT_POSTPROC_PARAMS, scheme)
    assert params.class_vote_weights == (1.0, 1.0, 0.03125, 1.0) and table[0]["parasitemia_mae"] == pytest.approx(0.0)
    by_weight = {row["infected_weight"]: row["parasitemia_mae"] for row in table}
    assert by_weight[0.015625] == pytest.approx(0.0) and by_weight[0.0078125] == pytest.approx(0.2)
    assert min(by_weight) == 0.0078125 and len(table) == len(INFECTED_VOTE_WEIGHTS) + 4  # 3 down, 1 up (4: MAE 0.2)
    as_given, table = tune_infected_vote(_leaning_images(0.99, 0.96, 0.1), DEFAULT_POSTPROC_PARAMS, scheme,
                                         extend_edges=0)
    assert as_given.class_vote_weights == () and table[0]["parasitemia_mae"] == pytest.approx(0.2)
    assert len(table) == len(INFECTED_VOTE_WEIGHTS)


def test_infected_vote_search_goes_past_the_highest_weight():
    """A model that gives the true infected cell 0.3 only (2 x 0.3 < 0.7) needs a weight above
    the grid's highest: 4 (the ratio of 2 to 1) calls it and not the uninfected ones (0.1);
    8 ties and 16 calls them all."""
    params, table = tune_infected_vote(_leaning_images(0.3, 0.1, 0.1), DEFAULT_POSTPROC_PARAMS,
                                       class_scheme("bbbc041"))
    assert params.class_vote_weights == (1.0, 1.0, 4.0, 1.0) and table[0]["parasitemia_mae"] == pytest.approx(0.0)
    by_weight = {row["infected_weight"]: row["parasitemia_mae"] for row in table}
    assert by_weight[8.0] == pytest.approx(0.0) and by_weight[16.0] == pytest.approx(0.8) and max(by_weight) == 16.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(extend_edges=-1), "extend_edges=-1 must be an integer >= 0"),
    (dict(extend_edges=True), "extend_edges=True must be an integer >= 0"),
    (dict(weights=(1.0, 0.0)), r"weights=\(1.0, 0.0\) must be a non-empty sequence of finite numbers > 0"),
    (dict(weights=()), "must be a non-empty sequence"),
])
def test_infected_vote_search_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tune_infected_vote(_parasite_images(1), DEFAULT_POSTPROC_PARAMS, class_scheme("bbbc041"), **kwargs)
