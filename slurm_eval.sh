#!/usr/bin/env bash
#SBATCH --job-name=uni_seg_eval
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x_%j.out
# Evaluation only, from existing checkpoints (best_phase2.pth, else best_phase1.pth): tune the
# post-processing on val, evaluate on test, write metrics, figures and exports, render reports.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")}"

# ---- settings: edit here, or override from the environment --------------------------------
RUN_NAME=${RUN_NAME:-eval}
PROFILE=${PROFILE:-full}
EXTRA_PARAMS=${EXTRA_PARAMS:-}   # more papermill arguments, e.g. "-p USE_TTA True"
# ---------------------------------------------------------------------------------------------

source tools/activate_env.sh
read -ra extra <<< "$EXTRA_PARAMS"
exec tools/run_notebook.sh "$RUN_NAME" -p PROFILE "$PROFILE" -p N_GPUS 1 \
  -p RUN_PHASE1 False -p RUN_PHASE2 False -p RUN_EVALUATION True -p RUN_EXPORT True "${extra[@]}"
