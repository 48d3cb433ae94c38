"""Does the post-processing search's grid hold it back? For a trained run folder (a notebook run or
one run of `uni-seg sweep`: checkpoints/, processed/, results/), tune on its val split with the
default grid as given, with the default grid and the search past its edges (what §9 runs), and with
a wider grid as given, and give each winner's val PQ (the search's) and mean per-image test PQ.
When the winner sits on the edge of an axis (the default grid's lowest marker threshold, say), the
other two show what lies beyond. For each winner it also counts the test split's errors (true
cells merged with a neighbour, split, missed; false cells: `uni_seg.metrics.error_breakdown`).
`--tta` predicts the maps averaged over the 8 flips and rotations (`InferenceSettings.tta`) and
tunes on those: does test-time augmentation sharpen the seams between touching cells?

    .venv/bin/python bench/tuning_grid.py RUN_DIR [--grid '{"marker_threshold": [0.01, 0.02, 0.03]}'] [--tta]

The wider grid's axes replace the default's; `min_edge_cell_area` keeps the default's candidates
(fractions of the median validation cell) unless the grid names it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import run_checkpoint

from uni_seg.infer import load_inference_model, predict_split
from uni_seg.metrics import ERROR_KINDS, error_breakdown, pair_table, panoptic_quality
from uni_seg.postproc import instances_from_maps
from uni_seg.predict import InferenceSettings
from uni_seg.tuning import DEFAULT_TUNING_GRID, EDGE_EXTENSION_ROUNDS, edge_sliver_areas, tune_postproc

WIDER = dict(marker_threshold=[0.01, 0.015, 0.02, 0.03, 0.05], hv_smooth_sigma=[1.0, 1.5, 2.0, 3.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--grid", type=json.loads, default=WIDER, help="JSON: axes that replace the default grid's")
    parser.add_argument("--tta", action="store_true", help="maps averaged over the 8 flips and rotations")
    args = parser.parse_args()
    model, _ = load_inference_model(run_checkpoint(args.run), torch.device("cpu"))
    settings = InferenceSettings(tile_size=224, overlap=64, device="cpu", tta=args.tta)
    print(f"{args.run}: maps {'averaged over 8 flips and rotations' if args.tta else 'without test-time augmentation'}")
    val = list(predict_split(model, args.run / "processed", "val", settings, keep_maps=True, workers=0))
    test = list(predict_split(model, args.run / "processed", "test", settings, keep_maps=True, workers=0))
    default = {**DEFAULT_TUNING_GRID, "min_edge_cell_area": edge_sliver_areas([p.true_inst for p in val])}
    for name, grid, extend_edges in (("default grid, as given", default, 0),
                                     ("default grid, past its edges (§9)", default, EDGE_EXTENSION_ROUNDS),
                                     ("wider grid, as given", {**default, **args.grid}, 0)):
        best, table = tune_postproc([p.maps["np"] for p in val], [p.maps["hv"] for p in val],
                                    [p.true_inst for p in val], grid=grid, extend_edges=extend_edges)
        test_pq, errors = [], dict.fromkeys(("matched", *ERROR_KINDS), 0)
        for p in test:
            pred = instances_from_maps(p.maps["np"], p.maps["hv"], best)
            test_pq.append(panoptic_quality(p.true_inst, pred)["pq"])
            counts = error_breakdown(pair_table(p.true_inst, pred))
            for kind in errors:
                errors[kind] += counts[kind]
        chosen = {k: getattr(best, k) for k in grid}
        breakdown = ", ".join(f"{kind} {n}" for kind, n in errors.items())
        print(f"{name}: {len(table)} settings; val PQ {table[0]['pq']:.4f}, test PQ {np.mean(test_pq):.4f} "
              f"(test: {breakdown}); chosen {chosen}")


if __name__ == "__main__":
    main()
