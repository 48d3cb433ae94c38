#!/usr/bin/env bash
#SBATCH --job-name=uni_seg_train
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x_%j.out
# Train both phases on one GPU, then evaluate, export and render the HTML reports.
# Resubmitting this script continues an interrupted run from checkpoints/latest_phase*.pth.
# The Hugging Face token comes from the environment (HF_TOKEN) or `huggingface-cli login`;
# never write it here.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")}"

# ---- settings: edit here, or override from the environment --------------------------------
RUN_NAME=${RUN_NAME:-train}
PROFILE=${PROFILE:-full}
RESUME_TRAINING=${RESUME_TRAINING:-True}
N_GPUS=${N_GPUS:-1}   # the GPU granted above (--gres=gpu:1); N_GPUS=0 trains on the CPU
# DataLoader workers: the CPUs SLURM granted (--cpus-per-task above), one left for the training
# process itself, unless NUM_WORKERS is set.
NUM_WORKERS=${NUM_WORKERS:-$(( ${SLURM_CPUS_PER_TASK:-8} > 1 ? ${SLURM_CPUS_PER_TASK:-8} - 1 : 1 ))}
EXTRA_PARAMS=${EXTRA_PARAMS:-}   # more papermill arguments, e.g. "-p BACKBONE vit_large_imagenet"
# ---------------------------------------------------------------------------------------------

source tools/activate_env.sh
read -ra extra <<< "$EXTRA_PARAMS"
exec tools/run_notebook.sh "$RUN_NAME" -p PROFILE "$PROFILE" -p N_GPUS "$N_GPUS" -p NUM_WORKERS "$NUM_WORKERS" \
  -p RESUME_TRAINING "$RESUME_TRAINING" "${extra[@]}"
