"""Folder inference's throughput: does the CPU side keep a device busy?

    .venv/bin/python bench/bench_pipeline.py --workers 2 --device-ms 400 --images 8 [--json FILE]

Runs `uni_seg.infer.run_folder_inference` on K real 1600x1200 images of the subset (working
scale 0.5) with a stand-in device: in place of the model, a forward that sleeps `--device-ms`
per image (spread over its tiles, batch by batch) and returns the image's true maps (NP, HV,
NC from its mask, blurred and noised as a model's are), so reading, post-processing and every
export do their real work. Prints and, with --json, writes

    {"workers", "device_ms_per_image", "cpu_ms_per_image", "images_per_s",
     "serial_images_per_s", "device_busy_fraction", "peak_rss_mb", "images"}

`cpu_ms_per_image`: the CPU side of one image (read + resize, then post-processing, classes and
exports), measured in this process on one core (process CPU time, the median over the images);
`serial_images_per_s`: the same folder with `--workers 0` (everything in this process, one
image after another), in the same run; `device_busy_fraction`: the stand-in's busy time over
the wall time of the run with `--workers`. `--repeat R` feeds each image R times (under other
names) to see that memory stays flat over a long folder.

`--model BACKBONE [--device cuda] [--batch-size 32]` puts a real model (that architecture with
random weights: speed does not depend on them; decoder 256 channels, the full profile's) in the
stand-in's place, e.g. on a GPU node `--model uni --device cuda --workers 15`: the device time is
then measured (synchronised), not set, and `device_ms_per_image` reports it. `--stages` also prints the CPU
milliseconds of each CPU-side stage of one image (read, watershed, classes, scores, back to
full size, exports; one core, the median over the images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import RELATIVE, ROOT, find_real_subset

from uni_seg import predict as predict_mod
from uni_seg import export, infer
from uni_seg.data import parse_mask_to_instances, read_image, read_mask, resize_to_working_scale
from uni_seg.known_maps import close_separation_lines, degrade_maps, true_maps
from uni_seg.postproc import Segmentation, cells_at_size, classify_instances, instance_scores, instances_from_maps

SCALE = 0.5


def stand_in_maps(mask_path: Path, rng: np.random.Generator) -> np.ndarray:
    """float32 (3 + 4, h, w) at the working scale: NP, HV and NC a model might give for this mask."""
    inst, cls = parse_mask_to_instances(read_mask(mask_path), source=mask_path)
    _, inst, _ = resize_to_working_scale(np.zeros(inst.shape + (3,), np.uint8), close_separation_lines(inst), cls, SCALE)
    np_map, hv = degrade_maps(*true_maps(inst), 2.0, 0.15, rng)
    nc = np.stack([1 - np_map, np_map, np.zeros_like(np_map), np.zeros_like(np_map)])
    return np.concatenate([np_map[None], hv, nc]).astype(np.float32)


class StandInDevice:
    """The device's place in the pipeline: sleeps `ms_per_image` per image's worth of tiles and
    returns the tiles of each image's precomputed maps."""

    def __init__(self, maps: list[np.ndarray], ms_per_image: float, tiles_per_image: int, tile: int) -> None:
        self.maps = [torch.from_numpy(m) for m in maps]
        self.seconds_per_tile = ms_per_image / 1000 / tiles_per_image
        self.tile = tile

    def __call__(self, tiles: torch.Tensor, owners: list) -> torch.Tensor:
        time.sleep(self.seconds_per_tile * len(owners))
        t = self.tile
        return torch.stack([self.maps[k % len(self.maps)][:, y:y + t, x:x + t] for k, y, x in owners])


def cpu_ms_per_image(paths: list[Path], maps: list[np.ndarray], work: Path) -> float:
    """Median CPU milliseconds of one image's CPU side, in this process, one thread."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    times = []
    for k, (path, m) in enumerate(zip(paths, maps)):
        start = time.process_time()
        export.load_for_model(path, SCALE)
        export.export_image({"np": m[0], "hv": m[1:3], "nc": m[3:]}, path, f"cpu{k}", work, None,
                            ("background", "RBC", "WBC", "Platelet"), "detection", "jpg")
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def stage_ms_per_image(paths: list[Path], maps: list[np.ndarray], work: Path) -> dict[str, float]:
    """Median CPU milliseconds of each CPU-side stage of one image, in this process, one thread."""
    cv2.setNumThreads(1)
    times: dict[str, list[float]] = {}

    def timed(stage: str, fn, *args):
        start = time.process_time()
        result = fn(*args)
        times.setdefault(stage, []).append(1000 * (time.process_time() - start))
        return result

    for path, m in zip(paths, maps):
        image = timed("read", read_image, path)
        inst = timed("watershed", instances_from_maps, m[0], m[1:3], None)
        classes, probs = timed("classes", classify_instances, inst, m[3:])
        scores = timed("scores", instance_scores, inst, m[0])
        full, inst, classes, probs, scores = timed("full size", cells_at_size, inst, classes, probs, scores, image.shape[:2])
        seg = Segmentation(full, classes, probs, scores, inst, None, {})
        timed("exports", export.export_segmentation, work, path.stem, image, seg)
    medians = {stage: statistics.median(t) for stage, t in times.items()}
    medians["post-processing + classes + exports"] = sum(v for k, v in medians.items() if k != "read")
    return {k: round(v, 1) for k, v in medians.items()}


class ModelDevice:
    """A real model in the device's place: `TileBatcher`'s own forward, synchronised so that
    its time is the device's."""

    def __init__(self, backbone: str, device: str, batch_size: int) -> None:
        from uni_seg.model import build_model

        torch.manual_seed(0)
        self.settings = predict_mod.InferenceSettings(working_scale=SCALE, tile_size=224, overlap=64, batch_size=batch_size,
                                                device=device)
        self.model = build_model(backbone, weights="none", n_classes=4, decoder_channels=256).eval()
        self.batcher = predict_mod.TileBatcher(self.model, self.settings)

    def __call__(self, tiles: torch.Tensor, owners: list) -> torch.Tensor:
        maps = self.batcher._model_forward(tiles, owners)
        if self.batcher.device.type == "cuda":
            torch.cuda.synchronize(self.batcher.device)
        return maps


def run(folder: Path, out: Path, workers: int, device: StandInDevice | ModelDevice) -> tuple[float, float]:
    """(images per second, device-busy fraction) of one folder inference."""
    if isinstance(device, ModelDevice):
        model, settings = device.model, device.settings
    else:
        model = torch.nn.Identity()
        settings = predict_mod.InferenceSettings(working_scale=SCALE, tile_size=224, overlap=64, batch_size=16, device="cpu")
    busy = {"s": 0.0}

    def timed(tiles, owners):
        start = time.perf_counter()
        result = device(tiles, owners)
        busy["s"] += time.perf_counter() - start
        return result

    n = sum(1 for _ in folder.iterdir())
    start = time.perf_counter()
    infer.run_folder_inference(model, folder, out, settings, progress=False, workers=workers,
                               forward=timed, overwrite=True)
    wall = time.perf_counter() - start
    return n / wall, busy["s"] / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device-ms", type=float, default=400.0, help="stand-in device time per image (ms)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="feed each image this many times (memory check)")
    parser.add_argument("--skip-serial", action="store_true", help="do not measure --workers 0")
    parser.add_argument("--stages", action="store_true", help="also the CPU ms of each stage of one image")
    parser.add_argument("--model", default=None, help="a backbone (random weights) in the stand-in's place, e.g. uni")
    parser.add_argument("--device", default="cpu", help="with --model: cpu, cuda, ...")
    parser.add_argument("--batch-size", type=int, default=16, help="with --model: tiles per forward pass")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    subset = find_real_subset() or ROOT.parent / RELATIVE
    originals = sorted((subset / "train" / "original").glob("*.png"))
    chosen = [p for p in originals if cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape == (150, 200)][: args.images]
    if not chosen:
        raise SystemExit(f"no 1600x1200 images under {subset}/train/original")
    rng = np.random.default_rng(0)
    maps = [stand_in_maps(subset / "train" / "mask" / f"{p.stem}.png", rng) for p in chosen]
    h, w = maps[0].shape[1:]
    tiles = len(predict_mod.tile_starts(h, 224, 64)) * len(predict_mod.tile_starts(w, 224, 64))
    with tempfile.TemporaryDirectory() as tmp:
        work, folder = Path(tmp), Path(tmp) / "in"
        folder.mkdir()
        for r in range(args.repeat):  # names sort image by image, so image k is k % len(chosen)
            for k, p in enumerate(chosen):
                os.symlink(p, folder / f"{r:05d}_{k:03d}_{p.name}")
        order = sorted(folder.iterdir())
        if args.model:
            device = ModelDevice(args.model, args.device, args.batch_size)
        else:
            device = StandInDevice([maps[int(q.name.split("_")[1])] for q in order], args.device_ms, tiles, 224)
        cpu_ms = cpu_ms_per_image(chosen, maps, work)
        stages = stage_ms_per_image(chosen, maps, work) if args.stages else None
        serial = None if args.skip_serial else run(folder, work / "serial", 0, device)[0]
        rate, busy = run(folder, work / "parallel", args.workers, device)
        record = json.loads((work / "parallel" / "run.json").read_text())
    device_ms = args.device_ms if not args.model else 1000 * busy / rate
    result = {"workers": args.workers, "device_ms_per_image": round(device_ms, 1), "cpu_ms_per_image": round(cpu_ms, 1),
              "images_per_s": round(rate, 3), "serial_images_per_s": None if serial is None else round(serial, 3),
              "device_busy_fraction": round(busy, 3), "peak_rss_mb": record["peak_rss_mb"],
              "images": len(chosen) * args.repeat, "device": args.model or "stand-in"}
    if stages:
        result["stage_cpu_ms_per_image"] = stages
    print(f"load average {os.getloadavg()[0]:.1f}; {len(chosen)} real 1600x1200 images x {args.repeat}, {tiles} tiles each")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
