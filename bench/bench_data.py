"""Data-path benchmarks on one CPU core (§1-§2), on the real 1600x1200 masks.

    .venv/bin/python bench/bench_data.py [--masks 30] [--cache-images 8] [--samples 150] [--json FILE]

Prints ms per mask for `parse_mask_to_instances` and for `hv_maps` (full resolution), ms per
image to read and cache a raw pair, and augmented training samples per second of one core
from the cache (working scale 0.5, 224 px crops, `CellCropDataset(train=True)`), each crop read
from the memory-mapped cache file or from memory. Samples per second of one core are counted
in CPU time (`time.process_time`, everything on one thread), so that a busy machine does not
lower them; the wall-clock rate is printed beside. With --json FILE writes
{"samples_per_s_per_core": .. (from the cache files), "samples_per_s_per_core_in_memory": ..}.
Uses ../shared/data/bccd_subset; without it, synthetic smears of the same size stand in (and
the output says so).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, before numpy/torch start their pools

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch
from common import RELATIVE, ROOT, find_real_subset, median_ms

from uni_seg.cache import build_processed_cache
from uni_seg.data import find_dataset, parse_mask_to_instances, read_image, read_mask
from uni_seg.dataset import CellCropDataset
from uni_seg.synthetic import generate_synthetic_dataset
from uni_seg.targets import hv_maps

REAL = find_real_subset() or ROOT.parent / RELATIVE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=30, help="masks to time parse/hv on")
    parser.add_argument("--cache-images", type=int, default=8, help="raw pairs to cache for the sampling benchmark")
    parser.add_argument("--samples", type=int, default=150, help="augmented samples to draw")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (REAL / "train" / "mask").is_dir():
            root, source = REAL, f"real subset {REAL}"
        else:
            root, source = tmp / "synthetic", "synthetic 1600x1200 smears (real subset absent)"
            generate_synthetic_dataset(root, max(args.masks, args.cache_images), 1, seed=0,
                                       image_size=(1200, 1600), cell_diameter=100.0)
        pairs = find_dataset(root)["train"]
        print(f"data: {source}; 1 thread (cv2, torch, BLAS); {os.cpu_count()} cores on this machine")

        chosen = pairs[: args.masks]
        masks = [read_mask(p.mask_path) for p in chosen]
        shape = masks[0].shape
        parse_ms = median_ms(lambda m: parse_mask_to_instances(m, min_area=30), masks, repeat=2)
        insts = [parse_mask_to_instances(m, min_area=30)[0] for m in masks]
        hv_ms = median_ms(hv_maps, insts, repeat=2)
        read_mask_ms = median_ms(lambda p: read_mask(p.mask_path), chosen[:10])
        read_image_ms = median_ms(lambda p: read_image(p.image_path), chosen[:10])
        n_cells = statistics.mean(int(i.max()) for i in insts)
        print(f"parse_mask_to_instances  {parse_ms:7.1f} ms/mask   ({len(masks)} masks {shape[1]}x{shape[0]}, "
              f"{n_cells:.0f} cells each)")
        print(f"hv_maps                  {hv_ms:7.1f} ms/mask")
        print(f"read_mask / read_image   {read_mask_ms:7.1f} / {read_image_ms:.1f} ms/file")

        raw = tmp / "raw"
        subset = {"train": pairs[: args.cache_images], "test": find_dataset(root)["test"][:1]}
        for part, items in subset.items():
            for pair in items:
                for src, sub in ((pair.image_path, "original"), (pair.mask_path, "mask")):
                    (raw / part / sub).mkdir(parents=True, exist_ok=True)
                    (raw / part / sub / src.name).symlink_to(src)
        summary = build_processed_cache(raw, tmp / "processed", working_scale=args.scale, val_fraction=0.15,
                                        seed=0, min_area=30)
        n_cached = sum(summary.counts.values())
        print(f"build_processed_cache    {1000 * summary.seconds / n_cached:7.1f} ms/image "
              f"(read + parse + resize x{args.scale} + write; {n_cached} images)")

        rates = {}
        for in_memory in (False, True):
            ds = CellCropDataset(tmp / "processed", "train", args.crop, train=True, crops_per_image=50, seed=0,
                                 cache_in_memory=in_memory)
            for i in range(len(ds.samples)):  # warm up (and fill the memory cache)
                ds[i * ds.crops_per_image]
            n = min(args.samples, len(ds))
            start, cpu_start = time.perf_counter(), time.process_time()
            for i in range(n):
                ds[(1, i)]
            rate, wall_rate = n / (time.process_time() - cpu_start), n / (time.perf_counter() - start)
            rates["samples_per_s_per_core" + ("_in_memory" if in_memory else "")] = round(rate, 1)
            where = "from memory" if in_memory else "memory-mapped cache files"
            print(f"augmented train samples  {rate:7.1f} /s of one core's CPU time ({wall_rate:.1f} /s wall clock; "
                  f"{args.crop} px crops, {where})")
        load_ms = median_ms(lambda s: s.load(), ds.samples)
        print(f"  a whole image's load   {load_ms:7.1f} ms (evaluation; a training crop reads only its window)")
        if args.json:
            args.json.write_text(json.dumps(rates, indent=1) + "\n")


if __name__ == "__main__":
    main()
