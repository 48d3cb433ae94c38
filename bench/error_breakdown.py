"""What the errors of trained runs are, on a split of their own processed cache: per run folder
(a notebook run or one run of `uni-seg sweep`: checkpoints/, processed/, results/), the true cells
matched, merged with a neighbour, split in pieces or missed, and the false cells, from the best
checkpoint (phase 2, else phase 1) with the post-processing tuned for it (`uni_seg.metrics.error_breakdown`).

    .venv/bin/python bench/error_breakdown.py RUN_DIR [RUN_DIR ...] [--split test] [--tile 224 --overlap 64]

Prints one row per run and, with several, the mean. For the choice between settings use the val
split; the test split is for reporting. It also counts the false cells that touch the image edge
(the Kaggle annotators drew few slivers of cells cut off by the edge; the tuned post-processing's
`min_edge_cell_area` drops them when the validation masks say so), and gives the mean per-image PQ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import run_checkpoint

from uni_seg.infer import load_inference_model, predict_split
from uni_seg.metrics import ERROR_KINDS, error_breakdown, match_instances, pair_table, panoptic_quality
from uni_seg.postproc import select_postproc
from uni_seg.predict import InferenceSettings

KINDS = ("matched", *ERROR_KINDS)


def edge_ids(labels: np.ndarray) -> np.ndarray:
    """The ids (0 included) on the outermost rows and columns of a label map."""
    return np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))


def false_on_edge(pairs, pred: np.ndarray) -> int:
    """How many predictions matching no true cell (IoU < 0.5) lie mostly outside every true cell
    and touch the image edge."""
    _, matched_p, _ = match_instances(pairs, 0.5)
    unmatched = np.ones(pairs.n_pred + 1, bool)
    unmatched[matched_p] = False
    unmatched[0] = False
    inside = np.bincount(pairs.pred, weights=pairs.inter, minlength=pairs.n_pred + 1)
    background = unmatched & (2 * inside < pairs.pred_area)
    return int(np.isin(pairs.pred_ids[background], edge_ids(pred)).sum())


def run_breakdown(run: Path, split: str, settings: InferenceSettings) -> dict[str, int]:
    """Summed `error_breakdown` counts of `run`'s best checkpoint on `split` of its processed cache."""
    checkpoint = run_checkpoint(run)
    model, meta = load_inference_model(checkpoint, torch.device("cpu"))
    postproc, line = select_postproc(None, run / "results" / "postproc_params.json", meta.get("checkpoint_id"))
    print(f"{run}: {checkpoint.name}; {line}")
    totals = dict.fromkeys(("true", "predicted", *KINDS, "false on edge"), 0)
    pq = []
    for prediction in predict_split(model, run / "processed", split, settings, postproc, keep_maps=False, workers=0):
        pairs = pair_table(prediction.true_inst, prediction.pred_inst)
        for kind, n in error_breakdown(pairs).items():
            totals[kind] += n
        totals["false on edge"] += false_on_edge(pairs, prediction.pred_inst)
        pq.append(panoptic_quality(prediction.true_inst, prediction.pred_inst)["pq"])
    return {**totals, "PQ": float(np.mean(pq))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=64)
    args = parser.parse_args()
    settings = InferenceSettings(tile_size=args.tile, overlap=args.overlap, device="cpu")
    rows = [(run, run_breakdown(run, args.split, settings)) for run in args.runs]
    columns = ["true", *KINDS, "false on edge", "PQ"]
    print("\n| run | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for run, t in rows:
        print(f"| {run} | " + " | ".join(f"{t[k]:.4f}" if isinstance(t[k], float) else str(t[k]) for k in columns) + " |")
    if len(rows) > 1:
        mean = {k: np.mean([t[k] for _, t in rows]) for k in columns}
        print(f"| mean of {len(rows)} | " + " | ".join(f"{mean[k]:.4f}" if k.startswith("PQ") else f"{mean[k]:.1f}"
                                                     for k in columns) + " |")


if __name__ == "__main__":
    main()
