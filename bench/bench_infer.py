"""Whole tiled inference per real 1600x1200 image on CPU for the small ViT, split by step.

    .venv/bin/python bench/bench_infer.py [--images 3] [--threads N] [--decoder-channels 64] [--tta]

The model is `vit_tiny` with random weights (no download): the model time is what a
trained one costs, but its maps are noise, so the post-processing is also timed on realistic
maps (the true NP/HV maps of the image's mask, blurred, at the working scale) and, for the
choice made in `segment_image`, on the same maps enlarged to the full resolution.
Settings: working scale 0.5 (800x600), tiles 224, overlap 64 (20 tiles per image).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import RELATIVE, ROOT, find_real_subset, format_ms

DATA = find_real_subset() or ROOT.parent / RELATIVE

from uni_seg import predict as predict_mod
from uni_seg import data, export, postproc
from uni_seg.config import PRECISIONS

# Wall times on a shared machine are noisy: the minimum over images and the process CPU time
# (summed over threads; ~wall x threads when the machine is otherwise idle) are the steadier figures.


def realistic_maps(mask_path: Path, shape: tuple[int, int], scale: float, rng: np.random.Generator):
    """Blurred, noisy true NP/HV maps of a real mask at the working scale, or None without §1/§2."""
    try:
        from uni_seg.data import parse_mask_to_instances, read_mask, resize_to_working_scale
        from uni_seg.targets import hv_maps
    except ImportError:
        return None
    inst, cls = parse_mask_to_instances(read_mask(mask_path), source=mask_path)
    _, inst, _ = resize_to_working_scale(np.zeros(inst.shape + (3,), np.uint8), inst, cls, scale)
    np_map = cv2.GaussianBlur((inst > 0).astype(np.float32), (0, 0), 1.5)
    hv = np.stack([cv2.GaussianBlur(c, (0, 0), 1.5) for c in hv_maps(inst)])
    hv += rng.normal(0, 0.05, hv.shape).astype(np.float32)
    return inst, np.clip(np_map, 0, 1), np.clip(hv, -1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--decoder-channels", type=int, default=64, help="64: demo profile; 256: full profile")
    parser.add_argument("--tta", action="store_true", help="also time TTA (8x) on one image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="vit_tiny", help="registry name (random weights); uni: the full-size model")
    parser.add_argument("--precisions", default="fp32,bf16", help=f"comma-separated, of: {', '.join(PRECISIONS)}")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    args = parser.parse_args()

    folder = DATA / "test" / "original"
    if not folder.is_dir():
        print(f"skipped: real images absent ({folder})")
        return
    from uni_seg.model import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.backbone, weights="none", n_classes=4, decoder_channels=args.decoder_channels).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    paths = sorted(folder.iterdir())[: args.images]
    scale, tile, overlap = 0.5, 224, 64
    h, w = data.working_shape(1200, 1600, scale)
    n_tiles = len(data.tile_starts(h, tile, overlap)) * len(data.tile_starts(w, tile, overlap))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.backbone} + decoder {args.decoder_channels} ch ({n_params:.1f} M params, random weights) on {device}, "
          f"{args.threads} threads; {len(paths)} real images 1600x1200 -> {w}x{h}, {n_tiles} tiles {tile}/{overlap}")

    images = [data.read_image(p) for p in paths]
    settings = predict_mod.InferenceSettings(working_scale=scale, tile_size=tile, overlap=overlap, batch_size=args.batch_size,
                                       device=str(device))
    predict_mod.predict_maps(model, images[0][:448, :448], settings)  # warm-up
    rng = np.random.default_rng(0)
    steps = ("model", "postproc", "resize", "exports", "total")
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        wall = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        for image, path in zip(images, paths):
            clocks = [(time.perf_counter(), time.process_time())]
            maps = predict_mod.predict_maps(model, image, settings.replace(precision=precision))
            clocks.append((time.perf_counter(), time.process_time()))
            cells, classes, probs, scores = postproc.cells_from_maps(maps)
            clocks.append((time.perf_counter(), time.process_time()))
            full = data.resize_labels(cells, image.shape[:2])
            clocks.append((time.perf_counter(), time.process_time()))
            seg = postproc.Segmentation(full, classes, probs, scores, cells, None, {})
            with tempfile.TemporaryDirectory() as tmp:
                export.export_segmentation(Path(tmp), path.stem, image, seg)
                export.coco_annotations(seg.inst, seg.classes, seg.scores, 1, 1)
            clocks.append((time.perf_counter(), time.process_time()))
            for k, (a, b) in zip(steps, zip(clocks, clocks[1:])):
                wall[k].append(b[0] - a[0])
                cpu[k].append(b[1] - a[1])
            wall["total"].append(clocks[-1][0] - clocks[0][0])
            cpu["total"].append(clocks[-1][1] - clocks[0][1])
        print(f"\n[{precision}] per image over {len(images)} images; random-weight maps ({seg.n_cells} 'cells' in the last)")
        print(f"  {'step':<9} {'wall median':>12} {'wall min':>9} {'CPU s (all threads)':>20}")
        for k in steps:
            print(f"  {k:<9} {1000 * statistics.median(wall[k]):9.0f} ms {1000 * min(wall[k]):6.0f} ms "
                  f"{statistics.median(cpu[k]):17.2f} s")
        print(f"  {1 / statistics.median(wall['total']):.2f} images/s end to end; model "
              f"{statistics.median(wall['model']) / statistics.median(wall['total']):.0%} of the wall time")

    # Post-processing on realistic maps: at the working scale vs. maps enlarged to full size.
    mask_dir = DATA / "test" / "mask"
    rows = []
    for path in paths:
        maps = realistic_maps(mask_dir / path.name, (h, w), scale, rng)
        if maps is None:
            print("\n(post-processing on true maps skipped: uni_seg.data / uni_seg.targets not available)")
            break
        inst, np_map, hv = maps
        nc = np.zeros((4, h, w), np.float32)
        nc[0], nc[1] = 1 - np_map, np_map
        m = {"np": np_map, "hv": hv, "nc": nc}
        t0 = time.perf_counter()
        cells, *_ = postproc.cells_from_maps(m)
        t1 = time.perf_counter()
        data.resize_labels(cells, (1200, 1600))
        t2 = time.perf_counter()
        big_np = cv2.resize(np_map, (1600, 1200), interpolation=cv2.INTER_LINEAR)
        big_hv = np.stack([cv2.resize(c, (1600, 1200), interpolation=cv2.INTER_LINEAR) for c in hv])
        big_nc = np.stack([cv2.resize(c, (1600, 1200), interpolation=cv2.INTER_LINEAR) for c in nc])
        t3 = time.perf_counter()
        # the alternative needs its parameters in full-resolution pixels: areas x4, lengths x2
        d = postproc.DEFAULT_POSTPROC_PARAMS
        big = d.replace(min_area=4 * d.min_area, min_marker_area=4 * d.min_marker_area, max_hole_area=4 * d.max_hole_area,
                        hv_smooth_sigma=2 * d.hv_smooth_sigma, marker_open_radius=2 * d.marker_open_radius)
        postproc.cells_from_maps({"np": big_np, "hv": big_hv, "nc": big_nc}, big)
        t4 = time.perf_counter()
        rows.append((int(inst.max()), int(cells.max()), t1 - t0, t2 - t1, t4 - t2))
    if rows:
        print(f"\npost-processing on true maps (blurred + noise; {rows[0][0]} true / {rows[0][1]} found cells in the first):")
        print(f"  at working scale 800x600 + nearest label resize: {format_ms([r[2] + r[3] for r in rows])}  (chosen)")
        print(f"  maps enlarged to 1600x1200, post-processed there: {format_ms([r[4] for r in rows])}")

    if args.tta:
        t0 = time.perf_counter()
        predict_mod.predict_maps(model, images[0], settings.replace(tta=True, precision="fp32"))
        print(f"\nTTA (8 views), model+blend fp32, one image: {1000 * (time.perf_counter() - t0):.0f} ms")


if __name__ == "__main__":
    main()
