"""§9's classical baseline (Otsu on lightness, distance-transform peaks, watershed), its one
parameter tuned on training images, its block in metrics.json beside the model's, and the
report's lines for it and for the smears from elsewhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from uni_seg.baseline import (BASELINE_METHOD, baseline_block, baseline_instances, model_and_baseline_table,
                              predict_split_baseline, processed_pairs, tune_baseline)
from uni_seg.evaluation import evaluate_split
from uni_seg.metrics import panoptic_quality
from uni_seg.metrics_file import METRICS_SCHEMA, add_to_metrics_json, write_metrics_json


def stained_disks(shape, centres, radius) -> tuple[np.ndarray, np.ndarray]:
    """Purple disks on a white background (RGB uint8) and their instance map."""
    ys, xs = np.indices(shape)
    inst = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        inst[((ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2) & (inst == 0)] = i
    image = np.where(inst[..., None] > 0, np.uint8([140, 120, 200]), np.uint8([250, 250, 250]))
    return image, inst


def test_touching_cells_are_cut_at_their_waist_and_lone_cells_kept():
    image, true = stained_disks((120, 200), [(60, 40), (60, 78), (60, 150)], 20)  # two touching, one alone
    inst, scores = baseline_instances(image, min_distance=10)
    assert inst.max() == 3 and panoptic_quality(true, inst)["pq"] > 0.9
    assert scores.shape == (4,) and scores[0] == 0 and (scores[1:] > 0.2).all()
    one, _ = baseline_instances(image, min_distance=60)  # peaks this far apart: the touching pair is one cell
    assert one.max() == 2


def test_small_pieces_and_empty_images_and_bad_distances():
    image, _ = stained_disks((60, 60), [(30, 30)], 2)  # a speck of 13 px
    assert baseline_instances(image, 5)[0].max() == 0
    empty = np.full((40, 40, 3), 250, np.uint8)
    inst, scores = baseline_instances(empty, 5)
    assert inst.max() == 0 and scores.tolist() == [0.0]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="min_distance"):
            baseline_instances(image, bad)


def test_tuning_picks_the_distance_that_separates_the_cells_best():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        # a row of touching oval cells: their distance transform has a ridge, not one peak, so
        # peaks close together cut a cell in two, and peaks far apart merge neighbours
        image, inst = stained_disks((80, 240), [(40, 40 + 38 * k + int(rng.integers(-2, 3))) for k in range(5)], 20)
        ys = np.indices(inst.shape)[0]
        inst[np.abs(ys - 40) > 12] = 0
        pairs.append((np.where(inst[..., None] > 0, image, np.uint8(250)), inst))
    best, table = tune_baseline(pairs, grid=(3, 20, 60))
    assert best == 20 and [row["min_distance"] for row in table] == [20, 60, 3]
    assert table[0]["pq"] > 0.9 > table[-1]["pq"]
    with pytest.raises(ValueError, match="at least one"):
        tune_baseline([], grid=(5,))


def test_the_baseline_block_sits_beside_the_model_in_metrics_json(tmp_path):
    from uni_seg.cache import build_processed_cache
    from uni_seg.report import run_summary
    from uni_seg.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(tmp_path / "raw", 4, 2, seed=5, image_size=(160, 200), cell_diameter=40.0)
    build_processed_cache(tmp_path / "raw", tmp_path / "processed", working_scale=0.5, val_fraction=0.25, seed=0,
                          min_area=20)
    best, table = tune_baseline(processed_pairs(tmp_path / "processed", "train"), grid=(3, 6))
    predictions = predict_split_baseline(tmp_path / "processed", "test", best)
    assert len(predictions) == 2 and all(p.classes[1:].tolist() == [1] * p.pred_inst.max() for p in predictions)
    metrics = evaluate_split(predictions, 4)
    path = tmp_path / "metrics.json"
    doc = write_metrics_json(path, metrics, backbone="vit_tiny", weights="none", postproc_params={},
                             split_sizes={"test": 2})
    assert doc["schema"] == METRICS_SCHEMA and doc["baseline"] is None and doc["external"] is None
    doc = add_to_metrics_json(path, baseline=baseline_block(metrics, best, "train (3 images)", table))
    assert json.loads(path.read_text())["baseline"]["method"] == BASELINE_METHOD
    assert doc["baseline"]["dataset"]["pq"] == pytest.approx(metrics["dataset"]["pq"])
    table_text = model_and_baseline_table(doc)
    assert "| PQ |" in table_text and f"min distance {best} px, tuned on train (3 images)" in table_text
    with pytest.raises(ValueError, match="figures is not one of baseline, external"):
        add_to_metrics_json(path, figures={})
    external = {"images": "x", "n_images": 1, "iou_threshold": 0.5, "scale_note": "working scale 0.5, as given",
                "methods": {"model": {"recall": {"RBC": 0.5, "all": 0.5}, "annotated": {"RBC": 2}, "ap50": 0.4,
                                      "precision_floor": 0.3, "count_error": 1.0, "count_abs_error": 1.0}}}
    doc = add_to_metrics_json(path, external=external)
    summary = run_summary("r", "demo", "vit_tiny", "none", "none", {"test": 2}, "data", doc)
    assert "The classical baseline on the same test images" in summary and "| PQ |" in summary
    assert "Smears from elsewhere: 1 images of `x`" in summary and "| model | 0.50 | 0.50 | 0.40 | 0.30 |" in summary


def test_the_baseline_is_scored_on_a_cache_with_cells_of_unknown_class(boxed_synthetic, tmp_path):
    """Cells that no class box names are UNKNOWN_CLASS (-1) in the cache; the baseline's truth keeps
    them so (it once cast them to 255, and scoring a BBBC041-scheme run stopped there)."""
    from uni_seg.cache import build_processed_cache
    from uni_seg.classes import UNKNOWN_CLASS

    root, boxes = boxed_synthetic
    build_processed_cache(root, tmp_path / "processed", 0.5, 0.25, 0, 20, scheme="bbbc041", class_boxes=boxes)
    predictions = predict_split_baseline(tmp_path / "processed", "test", 6)
    assert any((p.true_cls == UNKNOWN_CLASS).any() for p in predictions)  # the synthetic boxes leave some out
    metrics = evaluate_split(predictions, 4)
    assert 0 < metrics["dataset"]["pq"] <= 1
