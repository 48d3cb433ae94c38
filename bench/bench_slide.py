"""Whole-slide inference and folder shards on this machine: peak memory and cells per second.

    .venv/bin/python bench/bench_slide.py [--widths 4096 16384 32768] [--height 2048] [--region 1024]
                                          [--images 16] [--shards 4] [--threads 1]

Slides: synthetic smears (uni_seg.synthetic, one 512 x 512 field per TIFF tile, cells ~24 px)
written by tifffile as tiled pyramids (levels 1, 1/2, 1/4), `--height` high and each of
`--widths` wide, segmented by `uni_seg.slide.run_slide_inference` at working scale 1 in regions
of `--region` px with a 48 px margin. Each slide runs in a fresh process, so its peak RSS
(getrusage) is its own. Folder: `--images` synthetic 640 x 480 smears, segmented by one process
(`run_folder_inference`) and as `--shards` shards (`run_shard`, one process each, one after
another here; on a cluster they run side by side) and `merge_shards`.

The model is a stand-in, not a network: a pointwise "darkness" map (tests/stand_ins.py's
DarknessModel: NP from the grey level, HV flat, classes from the colour), so the figures are
the cost of reading, tiling, post-processing and the streamed exports; a real backbone adds its
forward time per tile (bench/bench_infer.py measures that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
TILE = 512


def _field(seed: int, size: int = TILE) -> np.ndarray:
    from uni_seg.synthetic import render_synthetic_smear

    return render_synthetic_smear(np.random.default_rng(seed), size, size, cell_diameter=24, fill_fraction=0.3,
                                  n_wbc=(0, 2), n_platelets=(2, 6)).image


def write_synthetic_slide(path: Path, height: int, width: int) -> None:
    """A tiled pyramidal RGB TIFF, tile by tile (never the whole slide in memory)."""
    import tifffile

    rows, cols = height // TILE, width // TILE

    def tiles(k: int):
        f = 2**k
        for i in range(-(-rows // f)):
            for j in range(-(-cols // f)):
                out = np.zeros((TILE, TILE, 3), np.uint8)
                for a in range(i * f, min((i + 1) * f, rows)):
                    for b in range(j * f, min((j + 1) * f, cols)):
                        y, x = (a - i * f) * (TILE // f), (b - j * f) * (TILE // f)
                        out[y:y + TILE // f, x:x + TILE // f] = _field(a * cols + b)[::f, ::f]
                yield out

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        options = {"dtype": np.uint8, "tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib"}
        tif.write(tiles(0), shape=(height, width, 3), subifds=2, **options)
        for k in (1, 2):
            tif.write(tiles(k), shape=(height // 2**k, width // 2**k, 3), subfiletype=1, **options)


def _settings():
    from uni_seg.predict import InferenceSettings

    return InferenceSettings(tile_size=224, overlap=32, batch_size=16, device="cpu", precision="fp32")


def child_slide(path: Path, out: Path, region: int) -> None:
    from stand_ins import DarknessModel

    from uni_seg.infer import peak_rss_mb
    from uni_seg.slide import run_slide_inference

    model, base = DarknessModel(), peak_rss_mb()  # the process with torch and uni_seg loaded, before any pixel
    report = run_slide_inference(model, path, out, _settings(), region_size=region, margin=48, progress=False)
    print(json.dumps({"cells": report.cells, "regions": report.regions, "seconds": report.seconds,
                      "peak_rss_mb": report.peak_rss_mb, "base_rss_mb": base}))


def child_folder(folder: Path, out: Path, shard: str | None) -> None:
    from stand_ins import DarknessModel

    from uni_seg import infer, shards
    from uni_seg.infer import peak_rss_mb

    start = time.perf_counter()
    if shard is None:
        report = infer.run_folder_inference(DarknessModel(), folder, out, _settings(), progress=False, workers=0)
        cells = sum(int(r["n_cells"] or 0) for r in report.rows)
    elif shard == "merge":
        report = shards.merge_shards(out)
        cells = sum(int(r["n_cells"] or 0) for r in report.rows)
    else:
        k, n = (int(v) for v in shard.split("/"))
        shards.run_shard(DarknessModel(), folder, out, shards.Shard(k, n), _settings(), progress=False, workers=0)
        cells = None
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "cells": cells}))


def _run(*args: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--region", type=int, default=1024)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "slide":
            child_slide(Path(rest[0]), Path(rest[1]), int(rest[2]))
        else:
            child_folder(Path(rest[0]), Path(rest[1]), rest[2] if len(rest) > 2 else None)
        return
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"slides (height {args.height}, regions {args.region} px + 48 px margin, stand-in model, "
              f"{args.threads} thread(s)):")
        print("| width px | megapixels | regions | cells | seconds | cells/s | peak RSS MB | of which the process before any pixel |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for width in args.widths:
            path = tmp / f"slide_{width}.tif"
            write_synthetic_slide(path, args.height, width)
            r = _run("--child", "slide", str(path), str(tmp / f"out_{width}"), str(args.region), threads=args.threads)
            print(f"| {width} | {args.height * width / 1e6:.0f} | {r['regions']} | {r['cells']} | {r['seconds']:.1f} | "
                  f"{r['cells'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {r['base_rss_mb']:.0f} |", flush=True)
            path.unlink()
        folder = tmp / "folder"
        folder.mkdir()
        for i in range(args.images):
            image = _field(10_000 + i, 640)[:480]
            cv2.imwrite(str(folder / f"smear{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        one = _run("--child", "folder", str(folder), str(tmp / "one"), threads=args.threads)
        parts = [_run("--child", "folder", str(folder), str(tmp / "sharded"), f"{k}/{args.shards}", threads=args.threads)
                 for k in range(args.shards)]
        merge = _run("--child", "folder", str(folder), str(tmp / "sharded"), "merge", threads=args.threads)
        same = all((tmp / "one" / n).read_bytes() == (tmp / "sharded" / n).read_bytes()
                   for n in ("summary.csv", "coco_instances.json"))
        print(f"\nfolder of {args.images} synthetic 640x480 smears ({one['cells']} cells), stand-in model:")
        print("| run | seconds | cells/s | peak RSS MB |")
        print("|---|---:|---:|---:|")
        print(f"| 1 process | {one['seconds']:.1f} | {one['cells'] / one['seconds']:.0f} | {one['peak_rss_mb']:.0f} |")
        for k, p in enumerate(parts):
            print(f"| shard {k}/{args.shards} | {p['seconds']:.1f} | | {p['peak_rss_mb']:.0f} |")
        print(f"| merge | {merge['seconds']:.1f} | | {merge['peak_rss_mb']:.0f} |")
        longest = max(p["seconds"] for p in parts) + merge["seconds"]
        print(f"| {args.shards} shards side by side (longest shard + merge) | {longest:.1f} | "
              f"{merge['cells'] / longest:.0f} | {max(p['peak_rss_mb'] for p in parts):.0f} |")
        print(f"\nmerged summary.csv and coco_instances.json byte-identical to the one-process run: {same}")


if __name__ == "__main__":
    main()
