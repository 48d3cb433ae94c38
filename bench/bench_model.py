"""Model speed: forward and forward+backward time per image, per backbone and training phase.

    .venv/bin/python bench/bench_model.py                                   # CPU, fp32, small ViTs + ViT-L
    .venv/bin/python bench/bench_model.py --backbones vit_tiny --size 128 --batch 4
    python bench/bench_model.py --device cuda --precision bf16 --batch 16   # GPU: also images/s, peak memory

Random weights throughout (`weights="none"`): speed does not depend on the values. For each
backbone and phase it times, per image:
  infer      model.eval() forward under torch.no_grad() (what inference pays)
  train fwd  model.train() forward with autograd as the phase sets it (phase 1: backbone
             frozen, run without a graph; phase 2: LoRA rank 4 on every qkv, graph through it)
  fwd+bwd    train forward + CellSegLoss + backward (no optimiser step)
On CUDA it adds images/s for fwd+bwd and the peak memory allocated by that step.
`--decoder-channels auto` uses the profiles' values: 64 for vit_tiny/vit_small (demo), 256 else.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uni_seg.losses import CellSegLoss  # noqa: E402
from uni_seg.model import build_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    p.add_argument("--batch", type=int, default=None, help="crops per step (default: 2 on CPU, 16 on CUDA)")
    p.add_argument("--size", type=int, default=224, help="crop side in pixels (a multiple of 16)")
    p.add_argument("--backbones", default="vit_tiny,vit_small,uni", help="comma-separated registry names")
    p.add_argument("--phases", default="1,2", help="comma-separated phases to time")
    p.add_argument("--decoder-channels", default="auto", help="'auto' or an integer")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions")
    p.add_argument("--stat", default="min", choices=["min", "median"], help="statistic over the repetitions")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time, or process CPU time (CPU only; use with --threads 1 on a busy machine)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def timed(fn, device: torch.device, repeats: int, warmup: int, stat: str = "min", clock: str = "wall") -> float:
    """Seconds of `fn()` over `repeats` runs after `warmup` runs: their minimum or median.

    The minimum is the default: on a shared machine other processes only ever add time.
    `clock="cpu"` measures this process's CPU time instead of wall time: with `--threads 1` it
    is the single-core compute cost, unaffected by other processes sharing the cores.
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(now() - start)
    return min(times) if stat == "min" else statistics.median(times)


def dummy_batch(batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(batch, 3, size, size, generator=g).to(device),
        "np": (torch.rand(batch, 1, size, size, generator=g) > 0.5).float().to(device),
        "hv": (torch.rand(batch, 2, size, size, generator=g) * 2 - 1).to(device),
        "nc": torch.randint(0, 4, (batch, size, size), generator=g).to(device),
    }


def bench_one(backbone: str, phase: int, args: argparse.Namespace, device: torch.device) -> dict:
    if args.decoder_channels == "auto":
        channels = 64 if backbone in ("vit_tiny", "vit_small") else 256
    else:
        channels = int(args.decoder_channels)
    torch.manual_seed(0)
    model = build_model(backbone, "none", decoder_channels=channels, verbose=False)
    if phase == 2:
        model.add_lora(4, 8.0)
    model.set_phase(phase)
    model.to(device)
    loss_fn = CellSegLoss().to(device)
    batch = dummy_batch(args.batch, args.size, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    def infer():
        model.eval()
        with torch.no_grad(), autocast():
            model(batch["image"])

    def train_forward():
        model.train()
        with autocast():
            model(batch["image"])

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast():
            total, _ = loss_fn(model(batch["image"]), batch)
        total.backward()

    per_image_ms = {}
    for name, fn in [("infer_ms", infer), ("train_fwd_ms", train_forward), ("fwd_bwd_ms", train_step)]:
        if device.type == "cuda" and name == "fwd_bwd_ms":
            torch.cuda.reset_peak_memory_stats(device)
        per_image_ms[name] = 1000 * timed(fn, device, args.repeats, args.warmup, args.stat, args.clock) / args.batch
    row = dict(backbone=backbone, phase=phase, decoder_channels=channels, batch=args.batch, size=args.size,
               device=str(device), precision=args.precision, clock=args.clock,
               threads=torch.get_num_threads(), **per_image_ms,
               trainable=model.parameter_counts()["trainable"])
    if device.type == "cuda":
        row["images_per_s"] = 1000 / per_image_ms["fwd_bwd_ms"]
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    if args.size % 16:
        raise SystemExit(f"--size {args.size} must be a multiple of 16")
    if args.batch is None:
        args.batch = 16 if device.type == "cuda" else 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and device.type == "cuda":
        raise SystemExit("--clock cpu measures CPU work; on CUDA use the wall clock")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench_model: {where}, {args.precision}, batch {args.batch}, {args.size}x{args.size}, "
          f"{args.stat} of {args.repeats} (+{args.warmup} warm-up); {args.clock}-clock ms per image; "
          f"torch {torch.__version__}")
    header = f"{'backbone':<20}{'phase':>6}{'dec ch':>7}{'infer':>10}{'train fwd':>11}{'fwd+bwd':>10}"
    if device.type == "cuda":
        header += f"{'img/s':>9}{'peak GiB':>10}"
    print(header)
    rows = []
    for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        for phase in [int(p) for p in args.phases.split(",")]:
            row = bench_one(backbone, phase, args, device)
            rows.append(row)
            line = (f"{backbone:<20}{phase:>6}{row['decoder_channels']:>7}{row['infer_ms']:>10.1f}"
                    f"{row['train_fwd_ms']:>11.1f}{row['fwd_bwd_ms']:>10.1f}")
            if device.type == "cuda":
                line += f"{row['images_per_s']:>9.1f}{row['peak_mem_gib']:>10.2f}"
            print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
