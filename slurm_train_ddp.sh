#!/usr/bin/env bash
#SBATCH --job-name=uni_seg_ddp
#SBATCH --nodes=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=16
#SBATCH --mem=128G
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x_%j.out
# Train both phases with DistributedDataParallel on the GPUs of one node, then evaluate,
# export and render the HTML reports. The notebook's training cell spawns one process per GPU
# (N_GPUS, injected below); rank 0 writes checkpoints, logs and figures. Resubmitting this
# script continues an interrupted run. For several nodes: slurm_train_multinode.sh.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")}"

# ---- settings: edit here, or override from the environment --------------------------------
RUN_NAME=${RUN_NAME:-train_ddp}
PROFILE=${PROFILE:-full}
RESUME_TRAINING=${RESUME_TRAINING:-True}
# GPUs: what SLURM granted on this node (--gres=gpu:N above), unless N_GPUS is set.
N_GPUS=${N_GPUS:-${SLURM_GPUS_ON_NODE:-4}}
# DataLoader workers per rank: the node's CPUs (--cpus-per-task above) shared by the N_GPUS
# ranks, one CPU each left for the rank itself (16 CPUs, 4 GPUs: 3 workers per rank).
cpus=${SLURM_CPUS_PER_TASK:-16}
NUM_WORKERS=${NUM_WORKERS:-$(( cpus / N_GPUS > 1 ? cpus / N_GPUS - 1 : 1 ))}
EXTRA_PARAMS=${EXTRA_PARAMS:-}   # more papermill arguments, e.g. "-p BATCH_SIZE_PHASE1 8"
# ---------------------------------------------------------------------------------------------

source tools/activate_env.sh
read -ra extra <<< "$EXTRA_PARAMS"
exec tools/run_notebook.sh "$RUN_NAME" -p PROFILE "$PROFILE" -p N_GPUS "$N_GPUS" -p NUM_WORKERS "$NUM_WORKERS" \
  -p RESUME_TRAINING "$RESUME_TRAINING" "${extra[@]}"
