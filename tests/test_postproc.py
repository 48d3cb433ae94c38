"""Post-processing (uni_seg.postproc, section 8): instances_from_maps (fed the maps of known
cells, uni_seg.known_maps), classify_instances, the scores and the parameter file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scenes import disk_scene
from scipy import ndimage as ndi

from uni_seg import postproc
from uni_seg.data import parse_mask_to_instances, read_mask
from uni_seg.known_maps import close_separation_lines, true_maps
from uni_seg.metrics import panoptic_quality
from uni_seg.postproc import (
    DEFAULT_POSTPROC_PARAMS,
    classify_instances,
    hv_energy,
    instance_scores,
    add_stained_objects,
    instances_from_maps,
    join_nuclear_lobes,
    stain_reference,
    stained_pixels,
    load_postproc_params,
    save_postproc_params,
)


# --------------------------------------------------------------------------- helpers
def load_real_instances(mask_path: Path) -> np.ndarray:
    """The instance map int32 (H, W) of a real mask, as §1 parses it."""
    return parse_mask_to_instances(read_mask(mask_path), source=mask_path)[0]


def real_mask_paths(real_subset, n: int) -> list[Path]:
    paths = sorted((real_subset / "test" / "mask").glob("*.png"))[:n]
    return paths


# --------------------------------------------------------------------------- instances_from_maps
def test_true_maps_of_a_synthetic_scene_give_back_its_cells():
    inst = disk_scene()
    pred = instances_from_maps(*true_maps(inst))
    assert pred.dtype == np.int32 and pred.shape == inst.shape
    pq = panoptic_quality(inst, pred)
    assert pq["tp"] == inst.max() and pq["fp"] == 0 and pq["sq"] > 0.995  # a pixel or two may swap on the seam
    assert np.array_equal(np.unique(pred), np.arange(pred.max() + 1))  # 0 and 1..N contiguous


@pytest.mark.parametrize("diameter", [20, 60, 120])
def test_default_parameters_split_touching_pairs_from_20_to_120_px(diameter):
    r = diameter / 2
    cells = ((2 * r, 2 * r, r), (2 * r, 3.9 * r, r), (4.2 * r, 3 * r, r))  # pair overlapping by 0.1 r, third touching
    inst = disk_scene((int(6 * r), int(6 * r)), cells)
    pred = instances_from_maps(*true_maps(inst))
    assert pred.max() == 3
    assert panoptic_quality(inst, pred)["pq"] > 0.95


def test_empty_and_all_background_maps():
    z = np.zeros((40, 50), np.float32)
    out = instances_from_maps(z, np.zeros((2, 40, 50), np.float32))
    assert out.dtype == np.int32 and out.max() == 0


def test_bad_input_raises_clearly():
    with pytest.raises(ValueError, match="hv must be"):
        instances_from_maps(np.zeros((10, 10), np.float32), np.zeros((10, 10, 2), np.float32))
    with pytest.raises(ValueError, match="unknown post-processing parameter"):
        instances_from_maps(np.zeros((10, 10), np.float32), np.zeros((2, 10, 10), np.float32), threshold=0.3)
    with pytest.raises(ValueError, match="sobel_ksize"):
        instances_from_maps(np.zeros((10, 10), np.float32), np.zeros((2, 10, 10), np.float32), sobel_ksize=8)


def test_energy_is_zero_inside_cells_and_high_on_seams():
    inst = disk_scene()
    _, hv = true_maps(inst)
    e = hv_energy(hv, 11)
    core = ndi.binary_erosion(inst == 4, iterations=8)
    assert e[core].max() < 0.02
    seam = (inst[:, :-1] == 1) & (inst[:, 1:] == 2)  # the touching pair, left-right
    assert e[:, :-1][seam].min() > 0.3


def test_result_does_not_depend_on_the_tile():
    """Cells away from a crop's border come out identical in the crop and in the whole map."""
    rng = np.random.default_rng(0)
    inst = disk_scene((260, 300), ((60, 60, 20), (60, 98, 20), (150, 80, 30), (150, 200, 35), (230, 250, 20), (40, 250, 15)))
    np_map, hv = true_maps(inst)
    np_map = np.clip(ndi.gaussian_filter(np_map, 1.5) + 0.05 * rng.standard_normal(np_map.shape), 0, 1).astype(np.float32)
    hv = np.clip(ndi.gaussian_filter(hv, (0, 1.5, 1.5)) + 0.05 * rng.standard_normal(hv.shape), -1, 1).astype(np.float32)
    whole = instances_from_maps(np_map, hv)
    y0, y1, x0, x1 = 10, 215, 15, 270  # cuts the cells at (230, 250) and near the right border
    part = instances_from_maps(np_map[y0:y1, x0:x1], hv[:, y0:y1, x0:x1])
    # a blob's cells depend on the maps within (smoothing radius + Sobel radius) of the blob
    p = DEFAULT_POSTPROC_PARAMS
    margin = 2 * int(np.ceil(2 * p.hv_smooth_sigma)) + p.sobel_ksize + 4
    blobs, n = ndi.label(part > 0, structure=np.ones((3, 3)))
    checked = 0
    for b, box in enumerate(ndi.find_objects(blobs), start=1):
        if box[0].start < margin or box[1].start < margin or box[0].stop > part.shape[0] - margin or box[1].stop > part.shape[1] - margin:
            continue
        region = blobs == b
        a, w = part[region], whole[y0:y1, x0:x1][region]
        pairs = np.unique(np.stack([a, w]), axis=1)
        assert np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size, "crop and whole differ"
        for wid in np.unique(w):  # the whole map's cell lies entirely inside this blob
            assert np.count_nonzero(whole == wid) == np.count_nonzero(w == wid)
        checked += 1
    assert checked >= 3


def test_watershed_runs_only_on_blobs_with_two_or_more_markers(monkeypatch):
    import uni_seg.postproc as postproc

    calls = []
    real = postproc.watershed

    def counting(image, markers, **kw):
        calls.append(image.shape)
        return real(image, markers, **kw)

    monkeypatch.setattr(postproc, "watershed", counting)
    inst = disk_scene()  # one touching pair, three lone cells
    pred = instances_from_maps(*true_maps(inst))
    assert pred.max() == 5
    assert len(calls) == 1 and calls[0][0] * calls[0][1] < 60 * 80  # the pair's bounding box only


@pytest.mark.parametrize("n_masks", [10])
def test_true_maps_of_real_masks_recover_the_cells(real_subset, n_masks):
    """Fed the true NP/HV maps of real masks (touching cells touching), PQ >= 0.99."""
    for path in real_mask_paths(real_subset, n_masks):
        truth = close_separation_lines(load_real_instances(path))
        pred = instances_from_maps(*true_maps(truth))
        pq = panoptic_quality(truth, pred)
        assert pq["pq"] >= 0.99, (path.name, pq)


# --------------------------------------------------------------------------- slivers on the edge
def sliver_scene() -> np.ndarray:
    """Whole discs of r 18 inside, and cells cut by each side: a sliver on the top and on the
    left (cut to ~1/5 of a disc), a big part of a cell on the bottom, a small whole cell inside,
    and a small whole cell that touches the bottom edge by one pixel."""
    inst = disk_scene((160, 200), ((60, 60, 18), (60, 140, 18), (110, 100, 18), (-12, 100, 18), (80, -12, 18),
                                   (150, 40, 18), (110, 160, 6), (153, 170, 6)))
    return inst


def test_drop_edge_slivers_drops_small_cells_on_the_frame_only():
    inst = sliver_scene()
    areas = np.bincount(inst.ravel())[1:]
    median = np.median(areas)
    assert areas[3] < 0.5 * median and areas[4] < 0.5 * median and areas[5] > 0.5 * median  # the scene's premise
    assert areas[6] < 0.5 * median and areas[7] < 0.5 * median  # the small cells are as small as the slivers
    assert (inst[-1] == 8).sum() == 1  # cell 8 touches the bottom edge
    kept = postproc.drop_edge_slivers(inst, int(0.5 * median))
    assert kept.dtype == inst.dtype
    # slivers 4 (top) and 5 (left) gone; the rest, the small cell touching the edge too, kept whole, renumbered
    assert np.array_equal(np.unique(kept), np.arange(7))
    for new, old in zip(range(1, 7), (1, 2, 3, 6, 7, 8)):
        assert np.array_equal(kept == new, inst == old)
    # whatever the area, only cells with less than half of them in the picture go: not cell 6
    # (cut by the bottom edge, three quarters in), not cell 8 (touching it)
    assert np.unique(postproc.drop_edge_slivers(inst, 10**6)).size - 1 == 6
    # a side that is not the picture's edge (a window of a larger picture) keeps its cells
    only_top = postproc.drop_edge_slivers(inst, int(0.5 * median), frame_sides=(True, False, False, False))
    assert (only_top[inst == 5] > 0).all() and (only_top[inst == 4] == 0).all()
    assert postproc.drop_edge_slivers(inst, 0) is inst
    assert postproc.drop_edge_slivers(inst, int(0.5 * median), frame_sides=(False,) * 4) is inst
    assert postproc.drop_edge_slivers(np.zeros((5, 5), np.int32), 100).max() == 0


def test_drop_edge_slivers_docstring_example():
    import doctest

    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner()
    for test in finder.find(postproc.drop_edge_slivers, "drop_edge_slivers", globs={"drop_edge_slivers": postproc.drop_edge_slivers}):
        runner.run(test)
    assert runner.summarize(verbose=False).attempted >= 3 and runner.summarize(verbose=False).failed == 0


def test_instances_from_maps_drops_slivers_only_when_asked_and_only_on_frame_sides():
    inst = sliver_scene()
    maps = true_maps(inst)
    assert instances_from_maps(*maps).max() == 8  # off by default
    assert DEFAULT_POSTPROC_PARAMS.min_edge_cell_area == 0
    sliver_area = int(0.5 * np.median(np.bincount(inst.ravel())[1:]))
    assert instances_from_maps(*maps, min_edge_cell_area=sliver_area).max() == 6
    assert instances_from_maps(*maps, frame_sides=(False, True, False, True), min_edge_cell_area=sliver_area).max() == 8
    with pytest.raises(ValueError, match="min_edge_cell_area"):
        postproc.PostprocParams(min_edge_cell_area=-1)


# --------------------------------------------------------------------------- classes and scores
def test_classify_instances_majority_excluding_background():
    inst = np.zeros((4, 6), np.int32)
    inst[:, :3] = 1
    inst[:, 3:5] = 3  # id 2 absent
    prob = np.zeros((4, 4, 6), np.float32)
    prob[0] = 0.1
    prob[1, :, :3] = 0.6  # cell 1: 9 RBC pixels ...
    prob[2, :, :3] = 0.3
    prob[2, 0, :3] = 0.7  # ... 3 WBC pixels
    prob[1, 0, :3] = 0.2
    prob[0, :, 3:5] = 0.7  # cell 3: background wins the argmax everywhere ...
    prob[3, :, 3:5] = 0.2  # ... but the vote is among cell classes: platelet
    prob[1, :, 3:5] = 0.1
    classes, probs = classify_instances(inst, prob)
    assert classes.tolist() == [0, 1, 0, 3]
    assert probs[1] == pytest.approx((9 * 0.6 + 3 * 0.2) / 12)
    assert probs[3] == pytest.approx(0.2)
    assert probs[0] == 0 and probs[2] == 0
    assert classes[inst].shape == inst.shape


def test_class_vote_weights_tilt_the_vote_but_not_the_reported_probability():
    inst = np.zeros((4, 6), np.int32)
    inst[:, :3] = 1
    prob = np.zeros((4, 4, 6), np.float32)
    prob[0], prob[1, :, :3], prob[2, :, :3], prob[3, :, :3] = 0.1, 0.35, 0.45, 0.1  # class 2 by a little
    assert classify_instances(inst, prob)[0][1] == 2
    classes, probs = classify_instances(inst, prob, (1.0, 1.0, 0.5, 1.0))
    assert classes[1] == 1 and probs[1] == pytest.approx(0.35)  # the vote tilted; the probability is the model's
    assert classify_instances(inst, prob, (1.0, 1.0, 1.0, 1.0))[0][1] == 2
    with pytest.raises(ValueError, match="3 weights for the 4 NC channels"):
        classify_instances(inst, prob, (1.0, 1.0, 0.5))
    params = postproc.PostprocParams(class_vote_weights=[1, 1, 0.5, 1])  # as JSON gives it
    assert params.class_vote_weights == (1.0, 1.0, 0.5, 1.0) and hash(params)
    assert postproc.PostprocParams.from_dict(json.loads(json.dumps(params.as_dict()))) == params
    maps = {"np": (inst > 0).astype(np.float32), "hv": np.zeros((2, 4, 6), np.float32), "nc": prob}
    assert postproc.cells_from_maps(maps, postproc.PostprocParams(min_area=1))[1][1] == 2
    assert postproc.cells_from_maps(maps, params.replace(min_area=1))[1][1] == 1
    for bad in ([1, -1], [0], "12", [1, float("nan")], [True]):
        with pytest.raises(ValueError, match="class_vote_weights"):
            postproc.PostprocParams(class_vote_weights=bad)


def test_classify_instances_matches_a_per_cell_loop():
    rng = np.random.default_rng(1)
    inst = disk_scene()
    logits = rng.standard_normal((4, *inst.shape)).astype(np.float32)
    prob = np.exp(logits) / np.exp(logits).sum(0)
    classes, probs = classify_instances(inst, prob)
    for i in range(1, inst.max() + 1):
        votes = np.bincount(prob[1:, inst == i].argmax(0), minlength=3)
        c = int(votes.argmax()) + 1
        assert classes[i] == c
        assert probs[i] == pytest.approx(prob[c, inst == i].mean(), rel=1e-5)


def test_classify_instances_rejects_bad_shapes():
    with pytest.raises(ValueError, match="nc_prob"):
        classify_instances(np.zeros((5, 5), np.int32), np.zeros((4, 5, 6), np.float32))


def test_instance_scores_are_mean_np_probability():
    inst = np.array([[0, 1, 1], [2, 2, 0]])
    p = np.array([[0.9, 0.2, 0.4], [1.0, 0.5, 0.3]], np.float32)
    s = instance_scores(inst, p)
    assert s == pytest.approx([0.0, 0.3, 0.75])


def test_saving_postproc_params_refuses_a_file_that_is_not_ours(tmp_path):
    from uni_seg.postproc import DEFAULT_POSTPROC_PARAMS as defaults

    path = tmp_path / "postproc_params.json"
    path.write_text('{"my": "notes"}')
    with pytest.raises(ValueError, match=r"postproc_params\.json: not a post-processing parameter file written by"):
        save_postproc_params(path, defaults, 0.5)
    assert path.read_text() == '{"my": "notes"}'
    path.unlink()
    save_postproc_params(path, defaults, 0.5)
    assert save_postproc_params(path, defaults, 0.6) == path  # ours: replaced
    assert json.loads(path.read_text())["score"]["pq"] == 0.6


def test_load_postproc_params_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_postproc_params(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"params": {"nonsense": 1}}))
    with pytest.raises(ValueError, match="bad.json"):
        load_postproc_params(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_postproc_params(bad)


def test_postproc_params_validate_when_made_and_travel_as_json(tmp_path):
    from uni_seg.postproc import PostprocParams

    with pytest.raises(ValueError, match="sobel_ksize=8"):
        PostprocParams(sobel_ksize=8)
    with pytest.raises(ValueError, match="fg_threshold"):
        PostprocParams(fg_threshold=1.5)
    with pytest.raises(ValueError, match="min_area"):
        PostprocParams(min_area=-1)
    with pytest.raises(ValueError, match="did you mean 'fg_threshold'"):
        PostprocParams.from_dict({"fg_treshold": 0.4})
    p = PostprocParams(fg_threshold=0.4, sobel_ksize=7)
    assert PostprocParams.from_dict(json.loads(json.dumps(p.as_dict()))) == p
    assert p.replace(min_area=12).min_area == 12 and p.min_area == 30  # frozen: replace makes a copy
    with pytest.raises(ValueError, match="marker_open_radius"):
        p.replace(marker_open_radius=-2)


# ---------------------------------------------------- 4. tuned parameters only for their checkpoint
# Issue 16, faults met trying the project as a new user: tuned parameters only for their checkpoint.
def test_tuned_postproc_parameters_are_used_only_for_their_checkpoint(tmp_path):
    tuned = postproc.DEFAULT_POSTPROC_PARAMS.replace(fg_threshold=0.3)
    path = postproc.save_postproc_params(tmp_path / "pp.json", tuned, 0.9, tuned_for={"checkpoint": "a.pth",
                                                                                     "checkpoint_id": "AAA"})
    params, line = postproc.select_postproc(None, path, "AAA")
    assert params == tuned and "tuned for this checkpoint" in line
    params, line = postproc.select_postproc(None, path, "BBB")
    assert params == postproc.DEFAULT_POSTPROC_PARAMS and "another checkpoint" in line and "--postproc" in line
    params, line = postproc.select_postproc(path, None, "BBB")  # named by the user: used, with a warning
    assert params == tuned and "WARNING" in line
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"params": tuned.as_dict()}))
    assert postproc.select_postproc(None, legacy, "AAA")[0] == postproc.DEFAULT_POSTPROC_PARAMS


# --------------------------------------------------------------------------- nuclear lobes joined
PINK, PURPLE, PALE = (205, 120, 125), (115, 60, 190), (235, 230, 225)


def smear(shape=(60, 150)):
    """A white cell cut in three lobes (cells 1-3, touching, purple), a red cell touching it
    with a small parasite (4), two touching red cells (5, 6), a lone purple cell apart (7), on
    a pale background: the cells' label map and the image."""
    inst = np.zeros(shape, np.int32)
    inst[10:30, 10:20], inst[10:30, 20:30], inst[30:40, 10:30] = 1, 2, 3
    inst[10:40, 30:45] = 4
    inst[10:40, 60:80], inst[10:40, 80:100] = 5, 6
    inst[10:30, 120:140] = 7
    image = np.full((*shape, 3), PALE, np.uint8)
    image[inst > 0] = PINK
    image[np.isin(inst, [1, 2, 3, 7])] = PURPLE
    image[20:24, 36:40] = PURPLE  # the parasite: a small part of cell 4
    return inst, image


def test_touching_lobes_of_nuclear_stain_are_one_cell_and_nothing_else_is_joined():
    inst, image = smear()
    joined = join_nuclear_lobes(inst, image, 40)
    assert joined.dtype == np.int32 and int(joined.max()) == 5  # 1-3 one cell; 4, 5, 6, 7 themselves
    assert len(np.unique(joined[np.isin(inst, [1, 2, 3])])) == 1
    for alone in (4, 5, 6, 7):
        cell = np.unique(joined[inst == alone])
        assert len(cell) == 1 and (joined == cell[0]).sum() == (inst == alone).sum(), alone
    # ids follow each joined cell's lowest old id: the lobes are 1, then 4..7 become 2..5
    assert [int(joined[inst == k][0]) for k in (1, 4, 5, 6, 7)] == [1, 2, 3, 4, 5]
    # lobes across a one-pixel seam of background are joined too
    seam = inst.copy()
    seam[:, 20] = np.where(np.isin(inst[:, 20], [1, 2]), 0, inst[:, 20])
    assert len(np.unique(join_nuclear_lobes(seam, image, 40)[np.isin(inst, [1, 2, 3]) & (seam > 0)])) == 1


def test_the_stain_is_measured_against_the_images_own_cells():
    inst, image = smear()
    assert join_nuclear_lobes(inst, image, 0) is inst  # 0: off
    assert join_nuclear_lobes(inst, image, 300) is inst  # no pixel that much bluer
    # a lab whose red cells are themselves blue-grey (BBBC041's are): the same lobes, on cells as
    # blue as they are, are no bluer than the image's typical cell, and nothing is joined
    grey = image.copy()
    grey[inst > 0] = PURPLE
    assert join_nuclear_lobes(inst, grey, 40) is inst
    # the same smear in another stain's tones (every channel shifted) joins the same cells
    shifted = np.clip(image.astype(int) + (10, -20, 30), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(join_nuclear_lobes(inst, shifted, 40), join_nuclear_lobes(inst, image, 40))
    # a dark background (dark field, fluorescence, a rendering): not a brightfield smear, no rule
    dark = image.copy()
    dark[inst == 0] = (20, 20, 60)
    assert stain_reference(inst, dark) is None and not stained_pixels(inst, dark, 40).any()
    assert join_nuclear_lobes(inst, dark, 40) is inst and add_stained_objects(inst, dark, 40, 10) is inst
    with pytest.raises(ValueError, match="same height and width"):
        join_nuclear_lobes(inst, image[:-1], 40)
    empty = np.zeros_like(inst)
    assert join_nuclear_lobes(empty, image, 40) is empty


def test_stained_blobs_left_as_background_become_cells_and_a_pale_background_does_not():
    inst, image = smear()
    image[44:51, 60:67] = PURPLE  # a platelet, 49 px, that the model called background
    image[44:47, 90:93] = PURPLE  # a speck of 9 px: under min_area
    image[44:54, 104:116] = (232, 236, 252)  # a pale bluish patch of background: no dye
    stained = stained_pixels(inst, image, 40)
    assert stained[44:51, 60:67].all() and not stained[44:54, 104:116].any() and not stained[inst == 5].any()
    added = add_stained_objects(inst, image, 40, 30)
    assert added.dtype == np.int32 and int(added.max()) == 8  # the platelet, after the 7 cells
    assert (added == 8).sum() == 49 and (added[44:51, 60:67] == 8).all()
    np.testing.assert_array_equal(added[inst > 0], inst[inst > 0])  # the cells are as they were
    assert add_stained_objects(inst, image, 40, 50) is inst and add_stained_objects(inst, image, 0, 30) is inst
    # a blob mostly inside a cell is that cell's (a parasite), not a new one
    inside = image.copy()
    inside[44:51, 60:67] = PALE
    inside[34:42, 62:69] = PURPLE  # 42 px inside cell 5 (rows 34-39), 14 below it
    assert add_stained_objects(inst, inside, 40, 10) is inst


def test_instances_from_maps_joins_lobes_given_the_image():
    # three overlapping discs as a white cell's lobes, two touching red cells, a lone purple
    # cell, and more red cells: most cell pixels are red, as in a smear
    inst = disk_scene((80, 260), ((30, 30, 12), (30, 52, 12), (50, 41, 12), (30, 100, 14), (30, 126, 14), (30, 170, 12),
                                  (60, 200, 14), (30, 230, 14), (62, 120, 14)))
    image = np.full((80, 260, 3), PALE, np.uint8)
    image[inst > 0] = PINK
    image[np.isin(inst, [1, 2, 3, 6])] = PURPLE
    np_prob, hv = true_maps(inst)
    cells = instances_from_maps(np_prob, hv)
    assert int(cells.max()) == 9  # the maps alone: the three lobes are three cells
    joined = instances_from_maps(np_prob, hv, image=image)
    assert int(joined.max()) == 7 and len(np.unique(joined[np.isin(inst, [1, 2, 3])])) == 1
    np.testing.assert_array_equal(instances_from_maps(np_prob, hv, image=image, stain_margin=0), cells)
    with pytest.raises(ValueError, match="stain_margin"):
        DEFAULT_POSTPROC_PARAMS.replace(stain_margin=-1)
