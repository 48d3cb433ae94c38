#!/usr/bin/env bash
#SBATCH --job-name=uni_seg_multinode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=128G
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x_%j.out
# Train on several nodes: one task per GPU (--ntasks-per-node = GPUs per node), each a DDP rank
# of `python -m uni_seg.train` started by srun. Three steps:
#   1. the processed cache, built once by the notebook on this (the batch) node, no training;
#   2. both training phases under srun: each task reads its rank from SLURM_PROCID/SLURM_NTASKS/
#      SLURM_LOCALID and meets the others at MASTER_ADDR:MASTER_PORT (the first node of the job);
#   3. evaluation, figures, exports and the HTML reports, by the notebook, from the checkpoints.
# Resubmitting continues an interrupted run (RESUME_TRAINING). Edit the #SBATCH lines above for
# your site; a task binds one GPU (--gpus-per-task=1), which the training code expects.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")}"

# ---- settings: edit here, or override from the environment --------------------------------
RUN_NAME=${RUN_NAME:-train_multinode}
PROFILE=${PROFILE:-full}
RESUME_TRAINING=${RESUME_TRAINING:-True}
# DataLoader workers per task: its CPUs (--cpus-per-task above), one left for the rank itself.
NUM_WORKERS=${NUM_WORKERS:-$(( ${SLURM_CPUS_PER_TASK:-4} > 1 ? ${SLURM_CPUS_PER_TASK:-4} - 1 : 1 ))}
EXTRA_PARAMS=${EXTRA_PARAMS:-}   # more parameters for every step, e.g. "-p EPOCHS_PHASE1 60"
# ---------------------------------------------------------------------------------------------

source tools/activate_env.sh
read -ra extra <<< "$EXTRA_PARAMS"
common=(-p PROFILE "$PROFILE" -p NUM_WORKERS "$NUM_WORKERS" -p RESUME_TRAINING "$RESUME_TRAINING" "${extra[@]}")

# Where the ranks meet: the first host of the allocation, a port derived from the job id (two
# jobs sharing a node do not collide).
# (No `| head -n 1`: under pipefail, scontrol's SIGPIPE after head exits would end the script.)
hosts=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?not inside a SLURM allocation}")
MASTER_ADDR=${hosts%%$'\n'*}
MASTER_PORT=${MASTER_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))}
export MASTER_ADDR MASTER_PORT
echo "ranks meet at $MASTER_ADDR:$MASTER_PORT; ${SLURM_NTASKS:-?} tasks, $NUM_WORKERS loader workers each"

# 1. the processed cache (one process, no training)
tools/run_notebook.sh "${RUN_NAME}_preprocess" "${common[@]}" -p N_GPUS 0 \
  -p RUN_PHASE1 False -p RUN_PHASE2 False -p RUN_EVALUATION False -p RUN_EXPORT False
# 2. training, one rank per task (uni_seg.train reads SLURM's variables)
srun --kill-on-bad-exit=1 "$PYTHON" -m uni_seg.train --phase both --no-progress "${common[@]}"
# 3. evaluation and reports from the best checkpoint
exec tools/run_notebook.sh "$RUN_NAME" "${common[@]}" -p N_GPUS 1 -p RUN_PHASE1 False -p RUN_PHASE2 False
