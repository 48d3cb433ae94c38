"""Post-processing benchmarks on real BCCD masks (CPU, one process).

    .venv/bin/python bench/bench_postproc.py [--images 10] [--split test] [--noise 0.15] [--blur 0.04]

1. `instances_from_maps` on the *true* NP/HV maps of real 1600x1200 masks (touching cells
   made to touch): ms per image and PQ (must be >= 0.99).
2. Ours vs a faithful restatement of HoVer-Net's `__proc_np_hv` (vqdang/hover_net,
   models/hovernet/post_proc.py: NP >= 0.5, objects < 10 px dropped, whole-tile min-max
   normalisation of H and V, Sobel ksize 21, 1 - min-max of the Sobel, marker threshold 0.4,
   hole filling, 5x5 elliptic opening, markers < 10 px dropped, watershed of the blurred
   inverted energy over the whole tile) on blurred noisy maps: the true maps blurred with a
   Gaussian of sigma = `blur` x cell diameter, plus Gaussian noise of std `noise` correlated
   over `noise-corr` x cell diameter (NP clipped to [0, 1], HV to [-1, 1]), at the working
   scale (0.5: cells ~50 px) and at full resolution (~100 px). Blur and noise scale with the
   cells because full-resolution maps are the working-scale maps magnified (the model runs
   at the working scale); `--noise-corr 0.015 --blur 0.02` keeps them at the working scale's
   pixel sizes instead. Both run side by side on identical maps; we report mean
   PQ and the median over images of each image's best-of-3 wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import cv2
import numpy as np
from common import RELATIVE, ROOT, find_real_subset
from common import timed as _timed
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from uni_seg.data import parse_mask_to_instances, read_mask
from uni_seg.metrics import panoptic_quality
from uni_seg.known_maps import close_separation_lines, degrade_maps, true_maps
from uni_seg.postproc import instances_from_maps

DATA = find_real_subset() or ROOT.parent / RELATIVE




def hovernet_proc_np_hv(np_prob: np.ndarray, hv: np.ndarray) -> np.ndarray:
    """HoVer-Net's `__proc_np_hv`, restated with current scipy/scikit-image names.

    Same steps and constants as the public code; `remove_small_objects(min_size=10)` is the
    bincount below (objects with fewer than 10 pixels dropped), `measurements.label` is
    `ndi.label` (4-connectivity, as in the original).
    """

    def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
        areas = np.bincount(labels.ravel())
        small = areas < min_size
        small[0] = False
        labels = labels.copy()
        labels[small[labels]] = 0
        return labels

    blb_raw, h_dir_raw, v_dir_raw = np_prob.astype(np.float32), hv[0].astype(np.float32), hv[1].astype(np.float32)
    blb = np.array(blb_raw >= 0.5, dtype=np.int32)
    blb = ndi.label(blb)[0]
    blb = remove_small(blb, 10)
    blb[blb > 0] = 1
    h_dir = cv2.normalize(h_dir_raw, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    v_dir = cv2.normalize(v_dir_raw, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    sobelh = cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=21)
    sobelv = cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=21)
    sobelh = 1 - cv2.normalize(sobelh, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    sobelv = 1 - cv2.normalize(sobelv, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    overall = np.maximum(sobelh, sobelv)
    overall = overall - (1 - blb)
    overall[overall < 0] = 0
    dist = (1.0 - overall) * blb
    dist = -cv2.GaussianBlur(dist, (3, 3), 0)
    overall = np.array(overall >= 0.4, dtype=np.int32)
    marker = blb - overall
    marker[marker < 0] = 0
    marker = ndi.binary_fill_holes(marker).astype("uint8")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, kernel)
    marker = ndi.label(marker)[0]
    marker = remove_small(marker, 10)
    return watershed(dist, markers=marker, mask=blb)


def timed(fn, *args, repeat: int = 1):
    return _timed(lambda: fn(*args), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--split", default="test")
    ap.add_argument("--noise", type=float, default=0.15, help="std of the added noise (NP and HV)")
    ap.add_argument("--blur", type=float, default=0.04, help="Gaussian sigma as a fraction of the cell diameter")
    ap.add_argument("--noise-corr", type=float, default=0.03, help="noise correlation length as a fraction of the cell diameter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-true", action="store_true")
    args = ap.parse_args()
    masks = sorted((DATA / args.split / "mask").glob("*.png"))[: args.images]
    if not masks:
        sys.exit(f"no masks under {DATA / args.split / 'mask'}: the real subset is absent")
    rng = np.random.default_rng(args.seed)
    truths = [close_separation_lines(parse_mask_to_instances(read_mask(m), source=m)[0]) for m in masks]

    if not args.skip_true:
        pqs, times = [], []
        for t in truths:
            np_map, hv = true_maps(t)
            pred, dt = timed(instances_from_maps, np_map, hv, repeat=3)
            times.append(dt)
            pqs.append(panoptic_quality(t, pred)["pq"])
        print(f"[true maps, full res 1600x1200, {len(truths)} {args.split} images] instances_from_maps: "
              f"median {1000 * statistics.median(times):.0f} ms/image (min {1000 * min(times):.0f}, max {1000 * max(times):.0f}); "
              f"PQ mean {np.mean(pqs):.4f}, min {np.min(pqs):.4f}")

    for label, scale, diameter in (("working scale 0.5 (800x600, cells ~50 px)", 0.5, 50), ("full res (1600x1200, cells ~100 px)", 1.0, 100)):
        sigma = args.blur * diameter
        rows = {"ours": ([], []), "hovernet": ([], [])}
        for t in truths:
            if scale != 1.0:
                t = np.ascontiguousarray(t[:: int(round(1 / scale)), :: int(round(1 / scale))])
            np_map, hv = true_maps(t)
            np_b, hv_b = degrade_maps(np_map, hv, sigma, args.noise, rng, args.noise_corr * diameter)
            for name, fn in (("ours", instances_from_maps), ("hovernet", hovernet_proc_np_hv)):
                pred, dt = timed(fn, np_b, hv_b, repeat=3)
                rows[name][0].append(panoptic_quality(t, pred)["pq"])
                rows[name][1].append(dt)
        (pq_o, t_o), (pq_h, t_h) = rows["ours"], rows["hovernet"]
        mo, mh = statistics.median(t_o), statistics.median(t_h)
        print(f"[blurred noisy maps, {label}; blur sigma {sigma:.1f} px, noise std {args.noise} "
              f"correlated over {args.noise_corr * diameter:.1f} px; {len(truths)} {args.split} images]")
        print(f"    ours     PQ {np.mean(pq_o):.4f}  {1000 * mo:7.1f} ms/image")
        print(f"    HoVer-Net PQ {np.mean(pq_h):.4f}  {1000 * mh:7.1f} ms/image")
        print(f"    PQ difference {np.mean(pq_o) - np.mean(pq_h):+.4f}; speed-up x{mh / mo:.1f}")


if __name__ == "__main__":
    main()
