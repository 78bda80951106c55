#!/usr/bin/env bash
# Evaluation on a Slurm cluster: one task per GPU, mmengine reads the ranks from Slurm (--launcher slurm).
#   GPUS=8 tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS and PYTHON as in tools/slurm_launch.sh.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: GPUS=8 tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" >&2
    exit 2
fi
TOOLS=$(cd "$(dirname "$0")" && pwd)  # paths the user typed stay relative to where they are
exec bash "$TOOLS/slurm_launch.sh" "$1" "$2" "$TOOLS/test.py" "$3" "$4" --launcher slurm "${@:5}"
