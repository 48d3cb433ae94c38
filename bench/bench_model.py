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
  backbone   the backbone's share of that: its forward alone (as the phase runs it) / fwd+bwd
Images/s are those of fwd+bwd; on CUDA it adds the peak memory allocated by that step.
`--flops` counts the model FLOPs per image of a training step (forward and forward+backward)
with torch's FlopCounterMode (matrix products, convolutions and attention: the operations that
FLOP-utilisation figures count), and `--matmul-rate` measures the device's dense matrix rate
in the chosen precision (square GEMMs); with both, each row gives the step's achieved FLOP
rate and its share of that measured rate. `--compile` times the torch.compile'd model.
`--decoder-channels auto` uses the profiles' values: 64 for vit_tiny/vit_small (demo), 256 else.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import torch
from common import timed as _timed

from uni_seg.config import RESOLVED_PRECISIONS
from uni_seg.losses import CellSegLoss
from uni_seg.model import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", default="fp32", choices=RESOLVED_PRECISIONS, help="autocast dtype")
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
    p.add_argument("--compile", action="store_true", help="time the torch.compile'd model (USE_COMPILE)")
    p.add_argument("--flops", action="store_true", help="count model FLOPs per image (one extra step, batch 1)")
    p.add_argument("--matmul-rate", action="store_true",
                   help="measure the device's dense matrix rate in --precision (GEMMs of side --matmul-size)")
    p.add_argument("--matmul-size", type=int, default=None, help="GEMM side (default: 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def timed(fn, device: torch.device, repeats: int, warmup: int, stat: str = "min", clock: str = "wall") -> float:
    """Seconds of `fn()` over `repeats` runs after `warmup` runs: their minimum or median.

    The minimum is the default: on a shared machine other processes only ever add time.
    `clock="cpu"` measures this process's CPU time instead of wall time: with `--threads 1` it
    is the single-core compute cost, unaffected by other processes sharing the cores.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return _timed(fn, repeats, warmup, stat, clock, sync)[1]


def dummy_batch(batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(batch, 3, size, size, generator=g).to(device),
        "np": (torch.rand(batch, 1, size, size, generator=g) > 0.5).float().to(device),
        "hv": (torch.rand(batch, 2, size, size, generator=g) * 2 - 1).to(device),
        "nc": torch.randint(0, 4, (batch, size, size), generator=g).to(device),
    }


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_tflops(device: torch.device, precision: str, size: int, repeats: int = 5) -> float:
    """Dense matrix rate of `device` in `precision`: TFLOP/s of (size x size) @ (size x size).

    fp32 runs as TF32 where PyTorch's default allows it (it does not on CUDA by default).
    The best of `repeats` runs of four back-to-back products, after one warm-up run.
    """
    dtype = AUTOCAST_DTYPES.get(precision, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: [a @ b for _ in range(4)], device, repeats, warmup=1)
    return 4 * 2 * size**3 / seconds / 1e12


def count_flops(fn) -> int:
    """Model FLOPs of one call of `fn` (matmuls, convolutions, attention; torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


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
    run = torch.compile(model) if args.compile else model
    loss_fn = CellSegLoss().to(device)
    batch = dummy_batch(args.batch, args.size, device)
    dtype = AUTOCAST_DTYPES.get(args.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    def infer(images: torch.Tensor = batch["image"], module: torch.nn.Module = run):
        model.eval()
        with torch.no_grad(), autocast():
            module(images)

    def train_forward():
        model.train()
        with autocast():
            run(batch["image"])

    def backbone_forward():
        # the backbone alone, with autograd exactly as CellSegModel.forward runs it in this phase
        model.train()
        grad = torch.enable_grad() if not model.backbone_frozen() else torch.no_grad()
        with grad, autocast():
            model._taps(batch["image"])

    def train_step(images: torch.Tensor = batch["image"], targets: dict = batch, module: torch.nn.Module = run):
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast():
            total, _ = loss_fn(module(images), targets)
        total.backward()

    per_image_ms = {}
    for name, fn in [("infer_ms", infer), ("train_fwd_ms", train_forward), ("backbone_fwd_ms", backbone_forward),
                     ("fwd_bwd_ms", train_step)]:
        if device.type == "cuda" and name == "fwd_bwd_ms":
            torch.cuda.reset_peak_memory_stats(device)
        per_image_ms[name] = 1000 * timed(fn, device, args.repeats, args.warmup, args.stat, args.clock) / args.batch
    row = dict(backbone=backbone, phase=phase, decoder_channels=channels, batch=args.batch, size=args.size,
               device=str(device), precision=args.precision, compiled=args.compile, clock=args.clock,
               threads=torch.get_num_threads(), **per_image_ms,
               backbone_share=per_image_ms["backbone_fwd_ms"] / per_image_ms["fwd_bwd_ms"],
               images_per_s=1000 / per_image_ms["fwd_bwd_ms"],
               trainable=model.parameter_counts()["trainable"])
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.flops:  # one image (FLOPs scale linearly with the batch), eager (compiling changes no FLOP)
        one = {k: v[:1] for k, v in batch.items()}
        row["gflops_fwd"] = count_flops(lambda: infer(one["image"], model)) / 1e9
        row["gflops_step"] = count_flops(lambda: train_step(one["image"], one, model)) / 1e9
        row["achieved_tflops"] = row["gflops_step"] * row["images_per_s"] / 1e3
        if args.matmul_tflops:
            row["matmul_share"] = row["achieved_tflops"] / args.matmul_tflops
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
    print(f"bench_model: {where}, {args.precision}{', compiled' if args.compile else ''}, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.stat} of {args.repeats} (+{args.warmup} warm-up); {args.clock}-clock "
          f"ms per image; torch {torch.__version__}")
    args.matmul_tflops = None
    if args.matmul_rate:
        size = args.matmul_size or (8192 if device.type == "cuda" else 1024)
        args.matmul_tflops = matmul_tflops(device, args.precision, size)
        print(f"dense matrix rate, {args.precision}, {size}x{size} GEMMs: {args.matmul_tflops:.2f} TFLOP/s")
    header = (f"{'backbone':<20}{'phase':>6}{'dec ch':>7}{'infer':>10}{'train fwd':>11}{'fwd+bwd':>10}"
              f"{'backbone':>10}{'img/s':>9}")
    if device.type == "cuda":
        header += f"{'peak GiB':>10}"
    if args.flops:
        header += f"{'GFLOP fwd':>11}{'GFLOP step':>12}{'TFLOP/s':>9}" + (f"{'of GEMM':>9}" if args.matmul_tflops else "")
    print(header)
    rows = []
    for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        for phase in [int(p) for p in args.phases.split(",")]:
            row = bench_one(backbone, phase, args, device)
            rows.append(row)
            line = (f"{backbone:<20}{phase:>6}{row['decoder_channels']:>7}{row['infer_ms']:>10.1f}"
                    f"{row['train_fwd_ms']:>11.1f}{row['fwd_bwd_ms']:>10.1f}{100 * row['backbone_share']:>9.0f}%"
                    f"{row['images_per_s']:>9.1f}")
            if device.type == "cuda":
                line += f"{row['peak_mem_gib']:>10.2f}"
            if args.flops:
                line += f"{row['gflops_fwd']:>11.1f}{row['gflops_step']:>12.1f}{row['achieved_tflops']:>9.3f}"
                if args.matmul_tflops:
                    line += f"{100 * row['matmul_share']:>8.1f}%"
            print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = dict(device=where, torch=torch.__version__, matmul_tflops=args.matmul_tflops, rows=rows)
        args.json.write_text(json.dumps(doc, indent=1))
    return rows


if __name__ == "__main__":
    main()
