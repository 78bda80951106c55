#!/usr/bin/env bash
# Training on a Slurm cluster: one task per GPU, mmengine reads the ranks from Slurm (--launcher slurm).
#   GPUS=16 tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS and PYTHON as in tools/slurm_launch.sh.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: GPUS=8 tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
    exit 2
fi
TOOLS=$(cd "$(dirname "$0")" && pwd)  # paths the user typed stay relative to where they are
exec bash "$TOOLS/slurm_launch.sh" "$1" "$2" "$TOOLS/train.py" "$3" --work-dir="$4" --launcher slurm "${@:5}"
