"""Figures of `uni_seg.viz`: render small synthetic cases, check the files and the colours."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from uni_seg import viz
from uni_seg.classes import CLASS_DISPLAY_COLOURS
from uni_seg.postproc import SplitPrediction


def disks(shape, centres, radius):
    ys, xs = np.indices(shape)
    inst = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        inst[(ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2] = i
    return inst


@pytest.fixture
def case():
    shape = (90, 120)
    true = disks(shape, [(20, 20), (20, 70), (60, 40), (65, 100)], 12)
    pred = disks(shape, [(21, 21), (20, 72), (60, 40), (15, 105)], 12)  # 3 matched, 1 FP, 1 missed
    pred[pred == 3] = 7  # non-contiguous ids are fine
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape + (3,)).astype(np.uint8)
    true_cls = np.where(true > 0, np.where(true == 2, 2, 1), 0).astype(np.uint8)
    classes = np.zeros(8, np.int64)
    classes[[1, 2, 4, 7]] = [1, 3, 1, 1]
    np_prob = (pred > 0).astype(np.float32) * 0.9
    hv = rng.uniform(-1, 1, (2,) + shape).astype(np.float32)
    return dict(image=image, true=true, pred=pred, true_cls=true_cls, classes=classes, np_prob=np_prob, hv=hv)


def test_error_map_colours_matches_false_positives_and_misses(case):
    rgb, counts = viz.error_map(case["true"], case["pred"], case["image"])
    assert counts == {"matched": 3, "false positive": 1, "missed": 1}
    assert tuple(rgb[60, 40]) == viz.ERROR_COLORS["matched"]
    assert tuple(rgb[15, 105]) == viz.ERROR_COLORS["false positive"]
    assert tuple(rgb[72, 100]) == viz.ERROR_COLORS["missed"]  # part of the missed cell not under the FP
    assert rgb.dtype == np.uint8 and rgb.shape == case["image"].shape


def test_overlays_and_class_maps(case):
    over = viz.instance_overlay(case["image"], case["true"])
    assert over.shape == case["image"].shape and over.dtype == np.uint8
    np.testing.assert_array_equal(over[case["true"] == 0], case["image"][case["true"] == 0])
    cmap = viz.class_map_rgb(case["true_cls"])
    assert tuple(cmap[20, 70]) == CLASS_DISPLAY_COLOURS[2] and tuple(cmap[0, 0]) == (0, 0, 0)
    assert viz.label_colors(5).shape == (6, 3) and (viz.label_colors(0) == 0).all()


def test_sample_figure_is_written(tmp_path, case):
    path = viz.plot_sample_figure(case["image"], case["true"], case["pred"], case["np_prob"], case["hv"],
                                  case["true_cls"], case["classes"][case["pred"]], tmp_path / "sub" / "sample.png", title="t")
    assert path.exists() and 20_000 < path.stat().st_size < 3_000_000
    img = mpimg.imread(path)
    assert img.shape[1] == 1600 and 800 < img.shape[0] < 1600  # 4 x 4 inch panels at 100 dpi


def test_save_sample_figures_picks_spread_images(tmp_path, case):
    preds = [SplitPrediction(f"s{i}", case["image"], case["true"], case["true_cls"], case["pred"], case["classes"],
                             np.ones(8, np.float32), np.ones(8, np.float32), {"np": case["np_prob"], "hv": case["hv"]})
             for i in range(5)]
    paths = viz.save_sample_figures(preds, tmp_path, n=3)
    assert [p.name for p in paths] == [f"visualization_sample_{k}.png" for k in (1, 2, 3)]
    assert all(p.stat().st_size > 20_000 for p in paths)
    with pytest.raises(ValueError, match="maps"):
        viz.save_sample_figures([SplitPrediction(**{**preds[0].__dict__, "maps": None})], tmp_path)


def test_area_histogram_and_count_scatter(tmp_path, case):
    trues, preds = [case["true"]] * 3, [case["pred"], case["true"], case["pred"][:, :60]]
    hist = viz.plot_area_histogram(trues, preds, tmp_path / "areas.png")
    assert hist.exists() and hist.stat().st_size > 10_000
    scatter = viz.plot_count_scatter(trues, preds, tmp_path / "counts.png")
    assert scatter.exists() and scatter.stat().st_size > 10_000
    both = viz.plot_count_scatter(trues, preds, tmp_path / "counts_cls.png", [case["true_cls"]] * 3, [case["classes"]] * 3)
    assert mpimg.imread(both).shape[1] > mpimg.imread(scatter).shape[1]  # second panel per class
    empty = viz.plot_area_histogram([np.zeros((5, 5), np.int32)], [np.zeros((5, 5), np.int32)], tmp_path / "empty.png")
    assert empty.exists()


def test_class_counts_from_maps_and_vectors(case):
    assert viz._class_counts(case["true"], case["true_cls"], 4).tolist() == [0, 3, 1, 0]
    assert viz._class_counts(case["pred"], case["classes"], 4).tolist() == [0, 3, 0, 1]


# ----- the run at a glance (uni_seg.report) ---------------------------------------------------
@pytest.mark.parametrize("provenance, shown", [
    ({"kind": "hub", "repo": "1aurent/vit_small_patch14_224.dinobloom", "revision": "5e74787f", "filename": "model.safetensors"},
     "`hf-hub:1aurent/vit_small_patch14_224.dinobloom` at revision `5e74787f`, file `model.safetensors`"),
    ({"kind": "file", "path": "/weights/uni/pytorch_model.bin", "sha256": "ab" * 32},
     f"file `/weights/uni/pytorch_model.bin`, sha256 `{'ab' * 32}`"),
    ({"kind": "none"}, "none: random initialisation"),
    ({}, "not recorded"),
])
def test_run_summary_says_where_the_weights_came_from(provenance, shown):
    from uni_seg.report import run_summary

    text = run_summary("r", "full", "dinobloom-s", "hub", provenance.get("kind", "hub"), {"test": 3}, "data/raw", None,
                       weights_provenance=provenance)
    assert f"| weights from | {shown} |" in text
    assert "weights from" not in run_summary("r", "full", "uni", "hub", "hub", {"test": 3}, "data/raw", None)

