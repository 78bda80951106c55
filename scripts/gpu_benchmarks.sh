#!/usr/bin/env bash
# The GPU tables of docs/benchmarks.md in one prepared run (for a machine with CUDA and this project's
# environment): backbones at batch 1 and a large batch in fp16, evit_mm vs timm vs baselines, and whole
# RetinaNet / segmentation predictions. Results go to ${OUT:-gpu_results}/ as JSON (and the tables to stdout).
#   OUT=gpu_results bash scripts/gpu_benchmarks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
B="$PY tools/benchmark.py --device cuda --warmup 10"
EV="evit_m0 evit_m4 evit_m4@deploy evit_m5 timm:efficientvit_m0 timm:efficientvit_m4 timm:efficientvit_m5 resnet50 swin-t"
$B $EV --shape 224x224 --batch-size 1 --dtype fp16 --repeats 100 --json "$OUT/backbones_224_b1_fp16.json"
$B $EV --shape 224x224 --batch-size 256 --dtype fp16 --repeats 30 --json "$OUT/backbones_224_b256_fp16.json"
$B $EV --shape 800x1344 --batch-size 1 --dtype fp16 --repeats 50 --json "$OUT/backbones_800x1344_b1_fp16.json"
$B configs/retinanet_evit_m4.py configs/retinanet_evit_m4.py@deploy configs/baselines/retinanet_r50_fpn_coco.py --modes predict \
   --shape 800x1333 --batch-size 1 --dtype fp16 --repeats 20 --json "$OUT/retinanet_predict_fp16.json"
$B configs/fpn_evit_m4_ade20k.py configs/baselines/fpn_r50_ade20k.py --modes predict \
   --shape 512x512 --batch-size 1 --dtype fp16 --repeats 20 --json "$OUT/segmentation_predict_fp16.json"
