"""Metric benchmarks (CPU, one process).

    .venv/bin/python bench/bench_metrics.py [--images 10] [--split test]

1. Per real 1600x1200 image: `panoptic_quality`, `aggregated_jaccard_index` and `coco_ap`
   (one image) of the true instances (touching cells made to touch) against a prediction
   (`instances_from_maps` of their blurred, noisy true maps at full resolution), and
   `evaluate_predictions` (every metric) per image over the set.
2. A synthetic 2048x2048 map with 4096 instances against a shifted copy: `panoptic_quality`
   and `coco_ap` (the issue's "well under a second").
Times are the median over images of each image's best of 3 runs.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from common import RELATIVE, ROOT, find_real_subset, timed

from uni_seg.data import parse_mask_to_instances, read_mask
from uni_seg.evaluation import evaluate_predictions
from uni_seg.metrics import aggregated_jaccard_index, coco_ap, panoptic_quality
from uni_seg.known_maps import close_separation_lines, degrade_maps, true_maps
from uni_seg.postproc import instance_scores, instances_from_maps

DATA = find_real_subset() or ROOT.parent / RELATIVE


def best_of(fn, *args, repeat: int = 3) -> float:
    return timed(lambda: fn(*args), repeat)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    masks = sorted((DATA / args.split / "mask").glob("*.png"))[: args.images]
    rng = np.random.default_rng(0)
    if masks:
        trues, preds, scores = [], [], []
        for m in masks:
            t = close_separation_lines(parse_mask_to_instances(read_mask(m), source=m)[0])
            np_b, hv_b = degrade_maps(*true_maps(t), 4.0, 0.15, rng, 3.0)
            p = instances_from_maps(np_b, hv_b)
            trues.append(t), preds.append(p), scores.append(instance_scores(p, np_b))
        times = {"panoptic_quality": [], "aggregated_jaccard_index": [], "coco_ap (one image)": []}
        for t, p, s in zip(trues, preds, scores):
            times["panoptic_quality"].append(best_of(panoptic_quality, t, p))
            times["aggregated_jaccard_index"].append(best_of(aggregated_jaccard_index, t, p))
            times["coco_ap (one image)"].append(best_of(coco_ap, [t], [p], [s]))
        n_cells = np.mean([int(t.max()) for t in trues])
        print(f"[real 1600x1200 {args.split} masks, {len(trues)} images, ~{n_cells:.0f} cells each]")
        for name, ts in times.items():
            print(f"    {name:28s} {1000 * statistics.median(ts):6.1f} ms/image (max {1000 * max(ts):.1f})")
        classes = [np.where(t > 0, 1, 0).astype(np.uint8) for t in trues]
        pred_classes = [np.r_[0, np.ones(int(p.max()), np.int64)] for p in preds]
        total = best_of(evaluate_predictions, trues, classes, preds, pred_classes, scores, 4, repeat=2)
        print(f"    {'evaluate_predictions (all)':28s} {1000 * total / len(trues):6.1f} ms/image")
    else:
        print(f"real subset absent ({DATA}); skipping the per-image figures")

    side, cell = 2048, 32
    yy, xx = np.indices((side, side))
    true = ((yy // cell) * (side // cell) + xx // cell + 1).astype(np.int32)
    pred = np.roll(true, (3, 5), axis=(0, 1))
    score = rng.random(int(pred.max()) + 1)
    print(f"[synthetic {side}x{side}, {int(true.max())} instances vs a shifted copy]")
    print(f"    {'panoptic_quality':28s} {1000 * best_of(panoptic_quality, true, pred):6.1f} ms")
    print(f"    {'coco_ap':28s} {1000 * best_of(coco_ap, [true], [pred], [score]):6.1f} ms")


if __name__ == "__main__":
    main()
