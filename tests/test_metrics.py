"""Metrics (uni_seg.metrics, section 9): PQ, AJI, COCO AP (vs pycocotools), pixel IoU/Dice,
detection, counts, evaluate_predictions and the metrics.json schema."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from scenes import perturb, random_scene, scored_dataset

from uni_seg.evaluation import evaluate_predictions
from uni_seg.metrics import (aggregated_jaccard_index, class_confusion, coco_ap, error_breakdown,
                             instance_classes_from_map, match_instances, pair_table, panoptic_quality)

# --------------------------------------------------------------------------- helpers


def brute_pq(true, pred, thr=0.5):
    tp_iou, tp = 0.0, 0
    t_ids = [i for i in np.unique(true) if i != 0]
    p_ids = [j for j in np.unique(pred) if j != 0]
    for i in t_ids:
        for j in p_ids:
            a, b = true == i, pred == j
            iou = (a & b).sum() / (a | b).sum()
            if iou > thr:
                tp += 1
                tp_iou += iou
    fp, fn = len(p_ids) - tp, len(t_ids) - tp
    return tp_iou / (tp + 0.5 * fp + 0.5 * fn), tp, fp, fn


def brute_aji(true, pred):
    """HoVer-Net's get_fast_aji, restated with full masks."""
    t_ids = [i for i in np.unique(true) if i != 0]
    p_ids = [j for j in np.unique(pred) if j != 0]
    inter_sum = union_sum = 0
    used = set()
    for i in t_ids:
        a = true == i
        best, best_j = 0.0, None
        for j in p_ids:
            b = pred == j
            iou = (a & b).sum() / (a | b).sum()
            if iou > best:
                best, best_j = iou, j
        if best_j is None:
            union_sum += a.sum()
        else:
            b = pred == best_j
            inter_sum += (a & b).sum()
            union_sum += (a | b).sum()
            used.add(best_j)
    union_sum += sum((pred == j).sum() for j in p_ids if j not in used)
    return inter_sum / union_sum


# --------------------------------------------------------------------------- PQ, AJI, pairs
def test_pq_matches_brute_force_on_random_scenes():
    rng = np.random.default_rng(0)
    for _ in range(5):
        true = random_scene(rng)
        pred = perturb(rng, true)
        got = panoptic_quality(true, pred)
        pq, tp, fp, fn = brute_pq(true, pred)
        assert (got["tp"], got["fp"], got["fn"]) == (tp, fp, fn)
        assert got["pq"] == pytest.approx(pq)
        assert got["pq"] == pytest.approx(got["sq"] * got["rq"])


def test_pq_accepts_any_label_values():
    rng = np.random.default_rng(1)
    true = random_scene(rng)
    pred = perturb(rng, true)
    ref = panoptic_quality(true, pred)
    # negative, huge and non-contiguous ids give the same answer (0 stays background)
    remap = {int(v): (int(v) * 7919 - 3_000_000_000 if v else 0) for v in np.unique(pred)}
    pred2 = np.vectorize(remap.get)(pred).astype(np.int64)
    true2 = np.where(true > 0, -true, 0)
    got = panoptic_quality(true2, pred2)
    for k in ("pq", "sq", "rq", "tp", "fp", "fn"):
        assert got[k] == pytest.approx(ref[k])


def test_pq_edge_cases():
    z = np.zeros((10, 10), np.int32)
    one = z.copy()
    one[2:5, 2:5] = 3
    assert math.isnan(panoptic_quality(z, z)["pq"])
    assert panoptic_quality(one, one)["pq"] == 1.0
    r = panoptic_quality(one, z)
    assert (r["pq"], r["fn"], r["fp"]) == (0.0, 1, 0)
    r = panoptic_quality(z, one)
    assert (r["pq"], r["fn"], r["fp"]) == (0.0, 0, 1)
    with pytest.raises(ValueError, match="shape"):
        panoptic_quality(z, np.zeros((10, 11), np.int32))
    with pytest.raises(ValueError, match="integer"):
        panoptic_quality(z.astype(float), z)


def test_iou_of_exactly_half_is_not_a_match_and_matches_are_unique():
    true = np.zeros((4, 8), np.int32)
    true[:, :4] = 1
    pred = np.zeros((4, 8), np.int32)
    pred[:, :2] = 5  # IoU = 8 / 16 = 0.5 exactly
    r = panoptic_quality(true, pred)
    assert r["tp"] == 0
    mt, mp, iou = match_instances(pair_table(random_scene(np.random.default_rng(2)), random_scene(np.random.default_rng(3))))
    assert np.unique(mt).size == mt.size and np.unique(mp).size == mp.size and (iou > 0.5).all()


def test_lower_threshold_uses_greedy_unique_matching():
    true = np.zeros((4, 12), np.int32)
    true[:, :6] = 1
    pred = np.zeros((4, 12), np.int32)
    pred[:, :3] = 1
    pred[:, 3:6] = 2  # each half of the true cell: IoU 0.5 each
    r = panoptic_quality(true, pred, iou_threshold=0.3)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)


def test_aji_matches_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(4):
        true = random_scene(rng)
        pred = perturb(rng, true)
        assert aggregated_jaccard_index(true, pred)["aji"] == pytest.approx(brute_aji(true, pred))


def test_pair_table_on_a_large_map_with_thousands_of_instances():
    """2048 x 2048 with 4096 instances, each matched to its shifted copy (the speed is
    bench/bench_metrics.py's to measure: a timed assertion would fail on a loaded machine)."""
    side, cell = 2048, 32
    yy, xx = np.indices((side, side))
    true = ((yy // cell) * (side // cell) + xx // cell + 1).astype(np.int32)  # 4096 squares
    pred = np.roll(true, (3, 5), axis=(0, 1))
    r = panoptic_quality(true, pred)
    assert r["tp"] == 4096


# --------------------------------------------------------------------------- COCO AP vs pycocotools
def _pycoco_ap(true_maps, pred_maps, scores, max_dets=100000):
    mask_util = pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gts, dts = [], [], []
    for img_id, (t, p, s) in enumerate(zip(true_maps, pred_maps, scores)):
        images.append({"id": img_id, "height": t.shape[0], "width": t.shape[1]})
        for i in sorted(int(v) for v in np.unique(t) if v):
            rle = mask_util.encode(np.asfortranarray((t == i).astype(np.uint8)))
            gts.append({"id": len(gts) + 1, "image_id": img_id, "category_id": 1, "segmentation": rle,
                        "area": float(mask_util.area(rle)), "bbox": list(mask_util.toBbox(rle)), "iscrowd": 0})
        for j in sorted(int(v) for v in np.unique(p) if v):
            rle = mask_util.encode(np.asfortranarray((p == j).astype(np.uint8)))
            dts.append({"image_id": img_id, "category_id": 1, "segmentation": rle, "score": float(s[j])})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "cell"}]}
        gt.createIndex()
        dt = gt.loadRes(dts)
        ev = COCOeval(gt, dt, "segm")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    # read the precision table directly: summarize() looks for maxDets == 100, not our cap
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (iou thresholds, recall points, categories) at area "all"

    def mean(a):
        return float(np.mean(a[a > -1])) if (a > -1).any() else -1.0

    return mean(prec), mean(prec[0]), mean(prec[5])


def test_coco_ap_equals_pycocotools():
    rng = np.random.default_rng(6)
    trues, preds, scores = [], [], []
    for k in range(5):
        t = random_scene(rng, n=18)
        p = perturb(rng, t)
        if k == 3:
            t = np.zeros_like(t)  # an image with predictions only (all false positives)
        if k == 4:
            p = np.zeros_like(p)  # an image with truth only (all missed)
        trues.append(t)
        preds.append(p)
        scores.append({int(j): float(rng.random()) for j in np.unique(p) if j})
    trues.append(np.zeros((20, 20), np.int32))  # an empty image
    preds.append(np.zeros((20, 20), np.int32))
    scores.append({})
    ours = coco_ap(trues, preds, scores)
    ref = _pycoco_ap(trues, preds, scores)
    assert ours["map"] == pytest.approx(ref[0], abs=1e-12)
    assert ours["ap50"] == pytest.approx(ref[1], abs=1e-12)
    assert ours["ap75"] == pytest.approx(ref[2], abs=1e-12)
    assert 0 < ours["map"] < 1


def test_coco_ap_ties_and_detection_cap_equal_pycocotools():
    # a detection with IoU exactly 0.5 with two true cells (pycocotools: the later one wins),
    # then one equal to the first true cell; plus an image with more detections than the cap
    t = np.zeros((4, 8), np.int32)
    t[:, :4], t[:, 4:] = 1, 2
    p = np.zeros((2, 4, 8), np.int32)
    p[0] = 7  # covers both: IoU 0.5 with each
    p[1][:, :4] = 3  # equals true cell 1
    trues, preds = [t, t], [p[0], p[1]]
    scores = [{7: 0.9}, {3: 0.8}]
    assert coco_ap(trues, preds, scores)["ap50"] == pytest.approx(_pycoco_ap(trues, preds, scores)[1], abs=1e-12)
    rng = np.random.default_rng(10)
    crowd = random_scene(rng, (200, 200), n=160, r=(3, 6))
    pred = perturb(rng, crowd)
    sc = {int(j): float(rng.random()) for j in np.unique(pred) if j}
    ours = coco_ap([crowd], [pred], [sc], max_dets=100)
    ref = _pycoco_ap([crowd], [pred], [sc], max_dets=100)
    assert len(sc) > 100 and ours["map"] == pytest.approx(ref[0], abs=1e-12)
    assert ours["map"] < coco_ap([crowd], [pred], [sc])["map"]  # the cap loses detections


def test_coco_ap_with_score_arrays_and_perfect_prediction():
    rng = np.random.default_rng(7)
    t = random_scene(rng)
    scores = np.linspace(0.1, 0.9, int(t.max()) + 1)
    r = coco_ap([t], [t], [scores])
    assert r == {"map": 1.0, "ap50": 1.0, "ap75": 1.0}
    assert math.isnan(coco_ap([np.zeros((5, 5), int)], [t[:5, :5]], [scores])["map"])  # no truth at all
    with pytest.raises(ValueError, match="pred_scores\\[0\\]"):
        coco_ap([t], [t], [{}])


# --------------------------------------------------------------------------- pixels, classes, evaluate
def test_class_confusion_and_instance_classes():
    t = np.array([[0, 1, 1], [2, 2, 0]])
    p = np.array([[0, 1, 2], [2, 2, 2]])
    c = class_confusion(t, p, 3)
    assert c.tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 2]]
    inst = np.array([[0, 1, 1], [1, 2, 2]])
    cls = np.array([[0, 2, 2], [1, 0, 0]])
    assert instance_classes_from_map(inst, cls, 3).tolist() == [0, 2, 0]
    with pytest.raises(ValueError, match="outside"):
        class_confusion(t, p + 5, 3)


def test_evaluate_predictions_pools_and_averages():
    rng = np.random.default_rng(8)
    ti, tc, pi, pc, ps = scored_dataset(rng)
    m = evaluate_predictions(ti, tc, pi, pc, ps, n_classes=4, image_names=["a", "b", "c"])
    assert m["n_images"] == 3 and m["class_names"] == ["background", "RBC", "WBC", "Platelet"]
    d, per = m["dataset"], m["per_image"]
    assert [r["image"] for r in per] == ["a", "b", "c"]
    # pooled counts are sums; pooled PQ uses the pooled counts
    for k in ("tp", "fp", "fn"):
        assert d[k] == sum(r[k] for r in per)
    each = [panoptic_quality(t, p) for t, p in zip(ti, pi)]
    iou_sum = sum(e["iou_sum"] for e in each)
    assert d["pq"] == pytest.approx(iou_sum / (d["tp"] + 0.5 * d["fp"] + 0.5 * d["fn"]))
    assert m["per_image_mean"]["pq"] == pytest.approx(np.mean([e["pq"] for e in each]))
    assert d["f1"] == pytest.approx(2 * d["tp"] / (2 * d["tp"] + d["fp"] + d["fn"]))
    assert d["map"] == pytest.approx(coco_ap(ti, pi, ps)["map"])
    assert [r["count_error"] for r in per] == [r["pred_count"] - r["true_count"] for r in per]
    assert m["per_image_mean"]["count_abs_error"] == pytest.approx(np.mean([abs(r["count_error"]) for r in per]))
    # per-class PQ: counts add up to at most the class-agnostic ones
    assert sum(v["tp"] for v in d["per_class_pq"].values()) <= d["tp"]
    assert set(d["pixel_iou"]) == set(m["class_names"])



def test_error_breakdown_names_merged_split_missed_and_false_cells():
    true = np.zeros((40, 100), np.int32)
    true[5:15, 5:15], true[5:15, 16:26] = 1, 2  # two neighbours, drawn as one below
    true[5:25, 40:60] = 3  # one cell, drawn as two halves below
    true[5:15, 70:80] = 4  # not found
    true[25:35, 5:15] = 5  # found
    pred = np.zeros_like(true)
    pred[5:15, 5:26] = 1
    pred[5:15, 40:60], pred[15:25, 40:60] = 2, 3
    pred[25:35, 5:15] = 4
    pred[30:38, 85:95] = 5  # in the background
    assert error_breakdown(pair_table(true, pred)) == {"true": 5, "predicted": 5, "matched": 1, "merged": 2,
                                                       "split": 1, "missed": 1, "false": 1}
    assert error_breakdown(pair_table(true, true)) == {"true": 5, "predicted": 5, "matched": 5, "merged": 0,
                                                       "split": 0, "missed": 0, "false": 0}


def test_the_errors_of_a_split_add_up_to_its_cells():
    ti, tc, pi, pc, ps = scored_dataset(np.random.default_rng(8))
    m = evaluate_predictions(ti, tc, pi, pc, ps, n_classes=4)
    errors, d = m["dataset"]["errors"], m["dataset"]
    assert errors["matched"] == d["tp"]
    assert errors["matched"] + errors["merged"] + errors["split"] + errors["missed"] == d["true_count"]
    assert errors == {k: sum(r["errors"][k] for r in m["per_image"]) for k in errors}
