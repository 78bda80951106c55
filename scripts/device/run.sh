#!/usr/bin/env bash
# Run on the lent GPU machine (carry .whl, filled by scripts/device/prepare.sh): installs the carried wheels beside
# the image's torch, stands in for mmcv's compiled ops with torchvision's NMS (scripts/device/mmcv_ext.py), checks
# that the stack imports, then runs scripts/gpu_benchmarks.sh for at most BUDGET_S seconds (default 480, inside the
# device tool's 600-second limit per command; its steps come in order of importance). The log and every result the
# script wrote come back as two files under $OUT (the device tool returns at most 8): gpu_log.txt and
# gpu_results.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
cp scripts/device/mmcv_ext.py /tmp/site/mmcv/_ext.py
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
"$PY" -c 'import torch, mmcv.ops, mmdet, mmseg, timm, evit_mm
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "timm", timm.__version__)' || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
RESULTS=/tmp/gpu_results
mkdir -p "$RESULTS"
PY="$PY" OUT="$RESULTS" timeout "${BUDGET_S:-480}" bash scripts/gpu_benchmarks.sh 2>&1 | tee "$OUT/gpu_log.txt"
status=${PIPESTATUS[0]}
tar -czf "$OUT/gpu_results.tar.gz" -C /tmp gpu_results
exit "$status"
