"""Training speed of the engine (uni_seg.train): seconds per optimiser step, phase 1 and phase 2.

    .venv/bin/python bench/bench_train.py          # CPU: vit_tiny and vit_small at the demo profile's sizes
    .venv/bin/python bench/bench_train.py --crop 224 --decoder-channels 256 --backbones vit_small   # full sizes
    .venv/bin/python bench/bench_train.py --device cuda --backbones vit_small uni --crop 224 \
        --decoder-channels 256 --batch 16 --num-workers 8                                  # a GPU node

Runs the real engine (`train_phase`) on a synthetic processed cache: for each backbone, phase 1
for two epochs, then phase 2 (LoRA) for two epochs from phase 1's best checkpoint. The figures
come from the second epoch of each phase (the first pays for one-off set-up: kernel selection,
compilation, worker start-up), from the history rows the engine writes:

    s/step      training time of the epoch / optimiser steps (one micro-batch per step here)
    img/s       training crops per second
    data %      share of the training time spent waiting for the next batch (next(loader))
    peak GiB    peak GPU memory allocated (CUDA only)

Backbones load with weights="none" (no download); their speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from uni_seg import checkpoints as C
from uni_seg import engine as E
from uni_seg import train as T
from uni_seg.config import PRECISIONS, resolve_config
from uni_seg.devices import resolve_device
from uni_seg.cache import build_processed_cache
from uni_seg.synthetic import generate_synthetic_dataset


def make_cache(work: Path, n_images: int) -> Path:
    generate_synthetic_dataset(work / "raw", n_train=n_images, n_test=1, seed=0)
    build_processed_cache(work / "raw", work / "processed", working_scale=0.5, val_fraction=1 / n_images, seed=0)
    return work / "processed"


def bench_backbone(args: argparse.Namespace, backbone: str, processed: Path, work: Path) -> list[dict]:
    from uni_seg.cache import load_processed

    n_train_images = len(load_processed(processed, "train"))
    crops_per_image = math.ceil(args.steps * args.batch / n_train_images)
    cfg = resolve_config(
        "demo", backbone=backbone, weights="none", processed_dir=str(processed), checkpoint_dir=str(work / backbone),
        results_dir=str(work / backbone / "results"), crop_size=args.crop, decoder_channels=args.decoder_channels,
        crops_per_image=crops_per_image, batch_size_phase1=args.batch, batch_size_phase2=args.batch,
        grad_accum_target=args.batch, epochs_phase1=2, epochs_phase2=2, patience_phase1=5, patience_phase2=5,
        warmup_epochs=0, precision=args.precision, num_workers=args.num_workers, use_compile=args.compile,
        n_gpus=0 if args.device == "cpu" else 1, resume_training=False)
    rows = []
    for phase in (1, 2):
        spec = dataclasses.replace(T.spec_from_config(cfg, phase, device=args.device, progress=False), plot=False)
        cuda = resolve_device(spec.device).type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = E.train_phase(spec)
        epoch = result.history[-1]
        crops = crops_per_image * n_train_images
        rows.append(dict(
            backbone=backbone, phase=phase, precision=C.load_checkpoint(spec.latest_path, mmap=True)["precision"],
            s_per_step=epoch["train_seconds"] / epoch["steps"], img_per_s=crops / epoch["train_seconds"],
            data_share=epoch["data_seconds"] / epoch["train_seconds"],
            peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan,
            first_epoch_s=result.history[0]["train_seconds"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["vit_tiny", "vit_small"])
    parser.add_argument("--crop", type=int, default=128, help="crop side (default: the demo profile's 128; full: 224)")
    parser.add_argument("--batch", type=int, default=4, help="crops per step (default 4 on CPU; use 16 on a GPU)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per epoch")
    parser.add_argument("--decoder-channels", type=int, default=64, help="default: the demo profile's 64 (full: 256)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (USE_COMPILE)")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device != "cpu" and torch.cuda.is_available() else "")
          + f"; crop {args.crop}, batch {args.batch}, decoder {args.decoder_channels}, workers {args.num_workers}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        processed = make_cache(work, n_images=6)
        print(f"synthetic cache ready in {time.perf_counter() - t0:.1f} s")
        for backbone in args.backbones:
            rows += bench_backbone(args, backbone, processed, work)
    print(f"\n{'backbone':<11}{'phase':>6}{'precision':>10}{'s/step':>9}{'img/s':>8}{'data %':>8}{'peak GiB':>10}"
          f"{'1st epoch s':>13}")
    for r in rows:
        print(f"{r['backbone']:<11}{r['phase']:>6}{r['precision']:>10}{r['s_per_step']:>9.3f}{r['img_per_s']:>8.2f}"
              f"{100 * r['data_share']:>7.1f}%{r['peak_gib']:>10.2f}{r['first_epoch_s']:>13.1f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
