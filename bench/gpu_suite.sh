#!/usr/bin/env bash
# The GPU measurements of docs/performance.md, in one command, on one GPU node:
#
#   bash bench/gpu_suite.sh [OUT_DIR]          # default OUT_DIR: results/gpu/<date>
#
# Full-size model (UNI's ViT-L/16 architecture, random weights: speed does not depend on them)
# at the full profile's sizes (224 crops, decoder 256, batch 16):
#   model_*.json/log   phase 1 and phase 2 steps in bf16 and fp16, eager and torch.compile'd:
#                      images/s, peak memory, the backbone forward's share of the step, model
#                      FLOPs per image and their share of the measured dense bf16/fp16 GEMM rate
#   train.log          the real engine with 16 DataLoader workers: s/step, images/s and the
#                      share of the step spent waiting in next(loader)
#   infer.log          tiled inference of real 1600x1200 images end to end (model + post-processing)
#   pipeline.json/log  folder inference of 16 real images with the CPU side in WORKERS - 1 worker
#                      processes: images/s and the share of the wall time the GPU was busy
#   device.txt         nvidia-smi, torch and CUDA versions
# Needs the real subset for infer.log (see tests/real_subset.py for where it is looked for).
# Python: $PYTHON, else the project's .venv. Each step's output is kept even if a later one fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-results/gpu/$(date +%Y-%m-%d)}
WORKERS=${WORKERS:-16}
BACKBONE=${BACKBONE:-uni}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-16}      # lower it on a GPU with less memory
SIZE=${SIZE:-224}
REPEATS=${REPEATS:-10}
PRECISIONS=${PRECISIONS:-bf16 fp16}  # a CPU has no fast fp16: PRECISIONS=bf16 there
# A quick check of the suite itself on a laptop:
#   DEVICE=cpu BACKBONE=vit_tiny BATCH=2 SIZE=64 REPEATS=1 WORKERS=2 PRECISIONS=bf16 bash bench/gpu_suite.sh /tmp/suite
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME COMMAND...: run, tee to OUT/NAME.log, remember a failure and go on
  local name=$1
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log" || { echo "!! $name failed"; status=1; }
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
} >"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

for precision in $PRECISIONS; do
  step "model_$precision" "$PYTHON" bench/bench_model.py --device "$DEVICE" --backbones "$BACKBONE" --precision "$precision" \
    --batch "$BATCH" --size "$SIZE" --decoder-channels 256 --repeats "$REPEATS" --warmup 3 --flops --matmul-rate \
    --json "$OUT/model_$precision.json"
  step "model_${precision}_compiled" "$PYTHON" bench/bench_model.py --device "$DEVICE" --backbones "$BACKBONE" \
    --precision "$precision" --batch "$BATCH" --size "$SIZE" --decoder-channels 256 --repeats "$REPEATS" --warmup 3 --compile \
    --flops --matmul-rate --json "$OUT/model_${precision}_compiled.json"
done
step train "$PYTHON" bench/bench_train.py --device "$DEVICE" --backbones "$BACKBONE" --crop "$SIZE" --decoder-channels 256 \
  --batch "$BATCH" --steps 20 --precision bf16 --num-workers "$WORKERS"
step infer "$PYTHON" bench/bench_infer.py --device "$DEVICE" --backbone "$BACKBONE" --decoder-channels 256 \
  --precisions "${PRECISIONS// /,}" --images 5 --batch-size 32 --threads "$WORKERS"
step pipeline "$PYTHON" bench/bench_pipeline.py --model "$BACKBONE" --device "$DEVICE" --workers $((WORKERS > 1 ? WORKERS - 1 : 1)) \
  --images 16 --batch-size 32 --skip-serial --json "$OUT/pipeline.json"
echo "results in $OUT"
exit "$status"
