"""A sheet of the boxes a trained run misses on a box dataset (e.g. BCCD's VOC boxes), to look
at before explaining a recall: per run folder, the annotated boxes of one class that no
predicted cell matches at box IoU 0.5 (as `uni-seg evaluate-boxes` scores them), each cropped
with a margin, the true box in yellow, the predicted cells' outlines in cyan, and its kind
(`uni_seg.external.missed_box_kinds`: split, merged, too small, misplaced, nothing) written on it.

    .venv/bin/python bench/missed_boxes.py RUN_DIR [RUN_DIR ...] --images ../shared/data/bccd_detection \
        --label WBC [--out DIR]

Writes DIR/<group>_<run>_<label>_missed.png per run (an existing one only with --overwrite)
and prints the counts by kind. The counts
per class of every class are in `evaluate-boxes`' table and metrics.json's `external` block.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from common import run_checkpoint
from skimage.segmentation import find_boundaries

from uni_seg.data import read_image
from uni_seg.external import (annotated_images, boxes_within, find_box_dataset, instance_boxes, match_boxes,
                              missed_box_kinds, model_segmenter, read_boxes)
from uni_seg.segmenter import Segmenter


def missed_crop(image: np.ndarray, inst: np.ndarray, box: np.ndarray, kind: str, size: int = 160) -> np.ndarray:
    """A `size` px square crop around `box` (with half its side as margin), the box in yellow,
    the predicted cells' outlines (`inst` at any scale) in cyan, `kind` written in its corner."""
    h, w = image.shape[:2]
    shown = image.copy()
    shown[find_boundaries(cv2.resize(inst, (w, h), interpolation=cv2.INTER_NEAREST), mode="inner")] = (0, 255, 255)
    x0, y0, x1, y1 = box.astype(int)
    cv2.rectangle(shown, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 0), 1)
    pad = max(x1 - x0, y1 - y0) // 2
    crop = cv2.resize(shown[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)], (size, size),
                      interpolation=cv2.INTER_AREA)
    cv2.putText(crop, kind, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return crop


def sheet(crops: list[np.ndarray], columns: int = 6) -> np.ndarray:
    """The crops (equal squares) as one white-padded sheet, `columns` wide."""
    size = crops[0].shape[0]
    rows = -(-len(crops) // columns)
    out = np.full((rows * size, columns * size, 3), 255, np.uint8)
    for k, crop in enumerate(crops):
        r, c = divmod(k, columns)
        out[r * size:(r + 1) * size, c * size:(c + 1) * size] = crop
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=Path, required=True, help="box dataset (images and VOC or COCO boxes)")
    parser.add_argument("--label", required=True, help="the class whose missed boxes to show, e.g. WBC")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the sheets")
    parser.add_argument("--overwrite", action="store_true", help="replace sheets of an earlier run of this script")
    args = parser.parse_args()
    if not args.out.is_dir():
        raise SystemExit(f"--out {args.out} is not a folder")
    sheets = {run: args.out / f"{run.parent.name}_{run.name}_{args.label}_missed.png" for run in args.runs}
    taken = [str(path) for path in sheets.values() if path.exists()]
    if taken and not args.overwrite:
        raise SystemExit(f"{', '.join(taken)} exist(s); pass --overwrite to replace them, or name another --out")
    images_dir, boxes_path = find_box_dataset(args.images)
    pairs, _ = annotated_images(images_dir, read_boxes(boxes_path))
    if not any(args.label in truth.labels for _, truth in pairs):
        raise SystemExit(f"{args.images}: no box is labelled {args.label!r}")
    for run in args.runs:
        seg = Segmenter.from_checkpoint(run_checkpoint(run), device="cpu", cell_diameter="auto",
                                        postproc=run / "results" / "postproc_params.json")
        scale, note = seg.scale_for([path for path, _ in pairs])
        segment = model_segmenter(seg.model, seg.settings.replace(working_scale=scale), seg.postproc)
        crops, kinds = [], Counter()
        for path, truth in pairs:
            image = read_image(path)
            truth, _ = boxes_within(truth, image.shape[:2])
            inst, scores = segment(image)  # at the working scale, as evaluate-boxes scores it
            pred = instance_boxes(inst) * np.tile([image.shape[1] / inst.shape[1], image.shape[0] / inst.shape[0]], 2)
            found = match_boxes(truth.boxes, pred, np.asarray(scores, np.float64)[1:])
            missed = np.setdiff1d(np.flatnonzero(np.array(truth.labels) == args.label), found)
            for g, kind in zip(missed, missed_box_kinds(truth.boxes[missed], pred)):
                crops.append(missed_crop(image, inst, truth.boxes[g], kind))
                kinds[kind] += 1
        out = sheets[run]
        if crops:
            cv2.imwrite(str(out), sheet(crops)[..., ::-1])
        print(f"{run}: {note}; {len(crops)} {args.label} boxes missed: {dict(kinds)}" + (f" -> {out}" if crops else ""))


if __name__ == "__main__":
    main()
