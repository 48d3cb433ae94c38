"""What the errors of trained runs are, on a split of their own processed cache: per run folder
(a notebook run or one run of `uni-seg sweep`: checkpoints/, processed/, results/), the true cells
matched, merged with a neighbour, split in pieces or missed, and the false cells, from the best
checkpoint (phase 2, else phase 1) with the post-processing tuned for it (`uni_seg.metrics.error_breakdown`).

    .venv/bin/python bench/error_breakdown.py RUN_DIR [RUN_DIR ...] [--split test] [--tile 224 --overlap 64]

Prints one row per run and, with several, the mean. For the choice between settings use the val
split; the test split is for reporting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from uni_seg.infer import load_inference_model, predict_split
from uni_seg.metrics import ERROR_KINDS, error_breakdown, pair_table
from uni_seg.postproc import select_postproc
from uni_seg.predict import InferenceSettings

KINDS = ("matched", *ERROR_KINDS)


def run_breakdown(run: Path, split: str, settings: InferenceSettings) -> dict[str, int]:
    """Summed `error_breakdown` counts of `run`'s best checkpoint on `split` of its processed cache."""
    checkpoint = next((run / "checkpoints" / name for name in ("best_phase2.pth", "best_phase1.pth")
                       if (run / "checkpoints" / name).is_file()), None)
    if checkpoint is None:
        raise SystemExit(f"{run}: no checkpoints/best_phase2.pth or best_phase1.pth")
    model, meta = load_inference_model(checkpoint, torch.device("cpu"))
    postproc, line = select_postproc(None, run / "results" / "postproc_params.json", meta.get("checkpoint_id"))
    print(f"{run}: {checkpoint.name}; {line}")
    totals = dict.fromkeys(("true", "predicted", *KINDS), 0)
    for prediction in predict_split(model, run / "processed", split, settings, postproc, keep_maps=False, workers=0):
        for kind, n in error_breakdown(pair_table(prediction.true_inst, prediction.pred_inst)).items():
            totals[kind] += n
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=64)
    args = parser.parse_args()
    settings = InferenceSettings(tile_size=args.tile, overlap=args.overlap, device="cpu")
    rows = [(run, run_breakdown(run, args.split, settings)) for run in args.runs]
    print(f"\n| run | true cells | matched | merged | split | missed | false cells |\n|---|---|---|---|---|---|---|")
    for run, t in rows:
        print(f"| {run} | {t['true']} | " + " | ".join(str(t[k]) for k in KINDS) + " |")
    if len(rows) > 1:
        mean = {k: np.mean([t[k] for _, t in rows]) for k in ("true", *KINDS)}
        print(f"| mean of {len(rows)} | {mean['true']:.1f} | " + " | ".join(f"{mean[k]:.1f}" for k in KINDS) + " |")


if __name__ == "__main__":
    main()
