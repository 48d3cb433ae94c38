#!/usr/bin/env bash
#SBATCH --job-name=uni_seg_infer
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x_%A_%a.out
# Folder inference over many nodes: a SLURM job array, one shard of the folder per array task,
# all writing into the same output folder, then one merge job for the folder-level files.
#
#   bash slurm_infer.sh CHECKPOINT INPUT_DIR OUTPUT_DIR [uni-seg infer options]
#       on the login node: submits SHARDS array tasks (default 4) and, after them, the merge job
#       (dependency afterany, so that the merge also runs, and names the shards that failed,
#       when one did not finish).
#   sbatch --array=0-7 slurm_infer.sh CHECKPOINT INPUT_DIR OUTPUT_DIR [options]
#       the array by hand; each task segments shard SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN
#       of SLURM_ARRAY_TASK_COUNT (`uni-seg infer --shard K/N`); a task whose shard record
#       exists resumes it (`--resume`: a requeued or rerun task does only the images missing).
#   bash slurm_infer.sh --merge OUTPUT_DIR      (or: uni-seg merge OUTPUT_DIR)
#       the folder-level files once every shard is complete; exit 1 naming the missing ones.
# Relative paths are taken from the folder the command is run from.
set -euo pipefail
here=$PWD
self=$(readlink -f "$0")
cd "${SLURM_SUBMIT_DIR:-$(dirname "$self")}"

absolute() { case $1 in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }

# ---- settings: edit here, or override from the environment --------------------------------
SHARDS=${SHARDS:-4}        # array tasks when this script submits the array itself
SBATCH=${SBATCH:-sbatch}   # the submit command
# ---------------------------------------------------------------------------------------------

usage="usage: bash slurm_infer.sh CHECKPOINT INPUT_DIR OUTPUT_DIR [uni-seg infer options] | --merge OUTPUT_DIR"

if [ "${1:-}" = "--merge" ]; then
  [ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
  source tools/activate_env.sh
  exec "$PYTHON" -m uni_seg.cli merge "$(absolute "$2")"
fi
[ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
checkpoint=$(absolute "$1") input=$(absolute "$2") output=$(absolute "$3")
shift 3

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # Not an array task: submit the array, then the merge after all of its tasks.
  mkdir -p logs
  array_job=$("$SBATCH" --parsable --array="0-$((SHARDS - 1))" "$self" "$checkpoint" "$input" "$output" "$@")
  array_job=${array_job%%;*}  # --parsable prints "jobid[;cluster]"
  merge_job=$("$SBATCH" --parsable --job-name=uni_seg_merge --gres=none --cpus-per-task=2 \
    --dependency="afterany:$array_job" "$self" --merge "$output")
  echo "submitted array job $array_job ($SHARDS shards of $input) and merge job ${merge_job%%;*} into $output"
  exit 0
fi

count=${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT is not set: run the array with sbatch --array}
index=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
resume=()
if [ -f "$output/shards/shard-$index-of-$count.json" ]; then
  resume=(--resume)
fi
source tools/activate_env.sh
echo "array task $SLURM_ARRAY_TASK_ID: shard $index/$count of $input into $output ${resume[*]}"
exec "$PYTHON" -m uni_seg.cli infer --checkpoint "$checkpoint" --input "$input" --output "$output" \
  --shard "$index/$count" "${resume[@]}" "$@"
