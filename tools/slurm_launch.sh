#!/usr/bin/env bash
# The srun call behind slurm_train.sh and slurm_test.sh: one task per GPU, mmengine reads the ranks from Slurm.
# It runs where it is called from, so that the config, checkpoint and work-dir paths given stay relative to there.
#   GPUS=16 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS="..." tools/slurm_launch.sh PARTITION JOB_NAME SCRIPT ARGS...
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: GPUS=8 tools/slurm_launch.sh PARTITION JOB_NAME SCRIPT [args...]" >&2
    exit 2
fi
GPUS=${GPUS:-8}
for name in GPUS GPUS_PER_NODE CPUS_PER_TASK; do
    if [ -n "${!name:-}" ] && ! [[ "${!name}" =~ ^[1-9][0-9]*$ ]]; then
        echo "slurm_launch.sh: $name must be a positive integer, got '${!name}'" >&2
        exit 2
    fi
done
# a job of fewer than 8 GPUs asks for only those (GPUS=4 on one node: gpu:4, not a whole 8-GPU node's worth)
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
# shellcheck disable=SC2086
exec srun -p "$1" --job-name="$2" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PYTHON" -u "${@:3}"
