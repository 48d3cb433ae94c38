"""What the stain rules (`PostprocParams.stain_margin`: nuclear lobes joined, stained blobs
added) change on a trained run's own splits: per run folder and split, the images whose cells
change, the cells before and after, and the mean PQ with the rules off and on. The maps of each
split are predicted once, from the best checkpoint with the post-processing tuned for it.

    .venv/bin/python bench/stain_rules_effect.py RUN_DIR [RUN_DIR ...] [--splits val test] [--margin 40]

Masks that draw white cells whole and platelets as cells should gain; masks that draw neither
(the Kaggle set) should see nothing change: a change there is a cell the rules got wrong.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import run_checkpoint

from uni_seg.infer import load_inference_model, predict_split
from uni_seg.metrics import panoptic_quality
from uni_seg.postproc import cells_from_maps, select_postproc
from uni_seg.predict import InferenceSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--splits", nargs="+", default=["val", "test"], choices=["train", "val", "test"])
    parser.add_argument("--margin", type=float, default=None, help="stain_margin to compare with 0 (default: the tuned file's)")
    args = parser.parse_args()
    settings = InferenceSettings(tile_size=224, overlap=64, device="cpu")
    for run in args.runs:
        model, meta = load_inference_model(run_checkpoint(run), torch.device("cpu"))
        postproc, _ = select_postproc(None, run / "results" / "postproc_params.json", meta.get("checkpoint_id"))
        on = postproc if args.margin is None else postproc.replace(stain_margin=args.margin)
        off = postproc.replace(stain_margin=0)
        for split in args.splits:
            predictions = predict_split(model, run / "processed", split, settings, postproc, keep_maps=True, workers=0)
            changed, cells, pq = 0, {"off": 0, "on": 0}, {"off": [], "on": []}
            for p in predictions:
                labels = {name: cells_from_maps(p.maps, params)[0] for name, params in (("off", off), ("on", on))}
                changed += int(not np.array_equal(labels["off"], labels["on"]))
                for name, inst in labels.items():
                    cells[name] += int(inst.max(initial=0))
                    pq[name].append(panoptic_quality(p.true_inst, inst)["pq"])
            print(f"{run} {split}: {changed} of {len(predictions)} images changed; cells {cells['off']} -> {cells['on']}; "
                  f"PQ {np.mean(pq['off']):.4f} -> {np.mean(pq['on']):.4f} (stain_margin {on.stain_margin:g})", flush=True)


if __name__ == "__main__":
    main()
