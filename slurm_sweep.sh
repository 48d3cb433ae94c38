#!/usr/bin/env bash
#SBATCH --job-name=uni_seg_sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x_%A_%a.out
# A grid of runs (`uni-seg sweep`, a JSON or YAML grid file) as a SLURM job array: one array task
# per run (configuration x seed), then a small job that writes the table once every task has
# ended, whether it succeeded or not. On the login node:
#
#   bash slurm_sweep.sh GRID [OUT]       e.g. bash slurm_sweep.sh sweeps/vit_tiny_pretraining.json
#
# checks the grid (a bad one is refused before anything is submitted), then submits this script as
# the array (each task: uni-seg sweep GRID --out OUT --task $SLURM_ARRAY_TASK_ID) and the table step
# (uni-seg sweep GRID --out OUT --table-only). OUT defaults to results/sweeps/<grid name>. The
# runs' settings (N_GPUS, NUM_WORKERS, ...) are the grid's: set them in its "base"; the resources
# above are each task's. Submitting again continues the sweep: finished runs are skipped, killed
# or failed ones redone. SWEEP_MAX_PARALLEL=N runs at most N tasks at a time.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")}"

source tools/activate_env.sh
step=${SWEEP_STEP:-submit}

if [ "$step" = task ]; then
  exec "$PYTHON" -m uni_seg.sweep "$SWEEP_GRID" --out "$SWEEP_OUT" --task "$SLURM_ARRAY_TASK_ID"
fi

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash $0 GRID [OUT]   (on the login node: submits one array task per run, then the table)" >&2
  exit 2
fi
grid=$(readlink -f "$1")
out=$(readlink -f "${2:-results/sweeps/$(basename "${grid%.*}")}")
runs=$("$PYTHON" -m uni_seg.sweep "$grid" --out "$out" --count)   # checks the grid and every run's folder
mkdir -p logs
array=0-$((runs - 1))${SWEEP_MAX_PARALLEL:+%$SWEEP_MAX_PARALLEL}
array_job=$(SWEEP_STEP=task SWEEP_GRID=$grid SWEEP_OUT=$out sbatch --parsable --array="$array" "$0")
array_job=${array_job%%;*}   # "id;cluster" on federated clusters
python=$PYTHON   # the table job starts in this folder too, but keep an absolute path (not resolved: a venv's python is a link)
if [[ $python == */* ]]; then python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"; fi
printf -v table_command '%q -m uni_seg.sweep %q --out %q --table-only' "$python" "$grid" "$out"
table_job=$(sbatch --parsable --dependency="afterany:$array_job" --job-name=uni_seg_sweep_table \
  --cpus-per-task=1 --mem=4G --time=00:20:00 --output="logs/%x_%j.out" --wrap="$table_command")
echo "submitted $runs runs of $grid as array job $array_job (tasks $array), the table as job ${table_job%%;*}:"
echo "  $out/table.md when it ends (progress: $PYTHON -m uni_seg.sweep $grid --out $out --plan)"
