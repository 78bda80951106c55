#!/usr/bin/env bash
# Run on the lent GPU machine (carry .whl, filled by scripts/device/prepare.sh): installs the carried wheels beside
# the image's torch, stands in for mmcv's compiled ops with torchvision's NMS (scripts/device/mmcv_ext.py), checks
# that the stack imports, then runs scripts/gpu_benchmarks.sh with its results under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
cp scripts/device/mmcv_ext.py /tmp/site/mmcv/_ext.py
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
"$PY" -c 'import torch, mmcv.ops, mmdet, mmseg, timm, evit_mm
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "timm", timm.__version__)' || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
PY="$PY" OUT="${OUT:-gpu_results}" bash scripts/gpu_benchmarks.sh
