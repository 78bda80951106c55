#!/usr/bin/env bash
# The GPU tables of docs/benchmarks.md in one prepared run (for a machine with CUDA and this project's
# environment), AMP fp16 at batch 1 and a large batch, in the order of what a short lease should measure first:
#   0. the CUDA tests (capture and replay of CUDA graphs, the device-parametrized model tests): seconds;
#   1. evit_mm's M4 backbone against timm's (same weights; eval, deploy, training step), paired ratios, with both
#      deployed models also replaying CUDA graphs (evit_mm.deploy.use_cuda_graphs): on an H200 EfficientViT is
#      bound by kernel launches (docs/benchmarks.md, "Issue 8 on a GPU"), which CUDA graphs remove;
#   2. whole RetinaNet-EViT-M4 predictions (as built, deployed, deployed with CUDA graphs) against mmdet's
#      RetinaNet-R50 (as built and with CUDA graphs), batch 1 and 16; the backbones' GPU busy time against their
#      wall time per call (--device-time: how host-bound each is, and the ratio once device-bound), training too;
#   3. the operators fp16 makes slowest against float32 in evit_mm's training step (--precision-profile: on the CPU
#      that comparison found bfloat16's 35-90x slower strided depthwise input gradient), then the same backbones and
#      RetinaNet through torch.compile mode reduce-overhead (compiled CUDA graphs);
#   4. semantic FPN-EViT-M4 against FPN-R50, and Mask R-CNN-EViT-M4 as built, deployed and with CUDA graphs;
#   5. deployment on bfloat16 weights (no autocast: no per-call weight casts, fewer kernel launches), backbone and
#      RetinaNet at batch 1, both models converted the same way;
#   6. backbones side by side (evit_mm, timm, ResNet-50, Swin-T), with each fast path off for evit_mm last;
#   7. whole-model training iterations (RetinaNet and semantic FPN, EViT-M4 against R50), batch 8.
# Results go to ${OUT:-gpu_results}/ as JSON / Markdown, the tables to stdout. A failing step is reported and
# the others still run; the exit status says whether any failed. CUDA graphs are new and measured here first: a
# step that times them and fails is run again without them (its eager measurements are the GPU baseline), and if
# their own tests fail, every step runs without them from the start.
#   OUT=gpu_results bash scripts/gpu_benchmarks.sh
# On the lent GPU machine (whose image has torch but not the OpenMMLab stack): bash scripts/device/prepare.sh here
# first, then run scripts/device/run.sh there with .whl carried; it installs the stack and calls this script.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
B="$PY tools/benchmark.py --device cuda --warmup 10 --dtype fp16"
FAILED=()
step() {  # step NAME COMMAND...: run one measurement, keep going if it fails (returns its status)
  local name=$1 status; shift
  echo "=== $name: $*"
  "$@" && return 0
  status=$?
  echo "=== $name FAILED (exit $status)"
  FAILED+=("$name")
  return "$status"
}
without_graphs() {  # the arguments of a command without its CUDA-graph flag and targets, one per line
  local arg
  for arg in "$@"; do
    case $arg in --cuda-graphs|*@deploy-cuda-graphs) ;; *) printf '%s\n' "${arg//--cuda-graphs /}" ;; esac
  done
}
GRAPHS=1  # 0 once CUDA graphs failed their tests
graphed_step() {  # graphed_step NAME COMMAND...: a step that also times CUDA graphs; without them if they fail
  local name=$1; shift
  if [ "$GRAPHS" = 1 ]; then
    step "$name" "$@" && return 0
  fi
  local eager
  mapfile -t eager < <(without_graphs "$@")
  step "${name}_without_cuda_graphs" "${eager[@]}"
}

step cuda_graph_tests $PY -m pytest -q -p no:cacheprovider tests/test_deploy/test_cuda_graphs.py || GRAPHS=0
step cuda_tests $PY -m pytest -q -p no:cacheprovider tests/test_models/test_efficientvit_backbone.py
graphed_step backbone_vs_timm bash -o pipefail -c "$PY tools/benchmark_backbone.py --arch m4 --device cuda --dtype fp16 --train \
  --cuda-graphs --shapes 1x224x224 256x224x224 1x800x1344 --warmup 10 --repeats 30 \
  | tee '$OUT/backbone_m4_vs_timm_fp16.md'"
graphed_step retinanet_b1 $B configs/baselines/retinanet_r50_fpn_coco.py configs/retinanet_evit_m4.py \
  configs/retinanet_evit_m4.py@deploy configs/retinanet_evit_m4.py@deploy-cuda-graphs \
  configs/baselines/retinanet_r50_fpn_coco.py@deploy-cuda-graphs --modes predict --shape 800x1333 --batch-size 1 \
  --repeats 30 --json "$OUT/retinanet_predict_b1_fp16.json"
graphed_step device_time bash -o pipefail -c "$PY tools/benchmark_backbone.py --arch m4 --device cuda --dtype fp16 \
  --train --cuda-graphs --device-time --shapes 1x224x224 256x224x224 --warmup 5 --repeats 10 \
  | tee '$OUT/backbone_m4_device_time_fp16.md'"
step precision_profile bash -o pipefail -c "$PY tools/benchmark_backbone.py --arch m4 --device cuda --dtype fp16 \
  --train --precision-profile --shapes 256x224x224 --warmup 3 --repeats 3 | tee '$OUT/backbone_m4_precision_profile.md'"
step backbone_vs_timm_compiled_cuda_graphs bash -o pipefail -c "$PY tools/benchmark_backbone.py --arch m4 --device cuda \
  --dtype fp16 --compile-mode reduce-overhead --shapes 1x224x224 256x224x224 --warmup 10 --repeats 30 \
  | tee '$OUT/backbone_m4_vs_timm_fp16_compiled_cuda_graphs.md'"
step retinanet_b1_compiled_cuda_graphs $B configs/baselines/retinanet_r50_fpn_coco.py \
  configs/retinanet_evit_m4.py@deploy --modes predict --compile-mode reduce-overhead --shape 800x1333 \
  --batch-size 1 --repeats 30 --json "$OUT/retinanet_predict_b1_fp16_compiled_cuda_graphs.json"
graphed_step retinanet_b16 $B configs/baselines/retinanet_r50_fpn_coco.py configs/retinanet_evit_m4.py \
  configs/retinanet_evit_m4.py@deploy configs/retinanet_evit_m4.py@deploy-cuda-graphs --modes predict \
  --shape 800x1333 --batch-size 16 --repeats 10 --json "$OUT/retinanet_predict_b16_fp16.json"
step segmentation_b1 $B configs/baselines/fpn_r50_ade20k.py configs/fpn_evit_m4_ade20k.py \
  configs/fpn_evit_m4_ade20k.py@deploy --modes predict --shape 512x512 --batch-size 1 --repeats 30 \
  --json "$OUT/segmentation_predict_b1_fp16.json"
graphed_step mask_rcnn_b1 $B configs/mask_rcnn_evit_m4.py configs/mask_rcnn_evit_m4.py@deploy \
  configs/mask_rcnn_evit_m4.py@deploy-cuda-graphs --modes predict --shape 800x1333 --batch-size 1 --repeats 20 \
  --json "$OUT/mask_rcnn_predict_b1_fp16.json"
step backbone_bf16_weights bash -o pipefail -c "$PY tools/benchmark_backbone.py --arch m4 --device cuda --bfloat16 \
  --shapes 1x224x224 256x224x224 --warmup 10 --repeats 30 | tee '$OUT/backbone_m4_vs_timm_bf16_weights.md'"
step retinanet_b1_bf16_weights $PY tools/benchmark.py --device cuda --warmup 10 \
  configs/baselines/retinanet_r50_fpn_coco.py@deploy-bf16 configs/retinanet_evit_m4.py@deploy-bf16 \
  --modes predict --shape 800x1333 --batch-size 1 --repeats 30 --json "$OUT/retinanet_predict_b1_bf16_weights.json"
EV="timm:efficientvit_m4 evit_m4 evit_m4@deploy evit_m0 evit_m5 timm:efficientvit_m0 timm:efficientvit_m5 resnet50 swin-t"
step backbones_b1 $B $EV --shape 224x224 --batch-size 1 --repeats 100 --json "$OUT/backbones_224_b1_fp16.json"
step backbones_b256 $B $EV --shape 224x224 --batch-size 256 --repeats 30 --json "$OUT/backbones_224_b256_fp16.json"
step backbone_ablations bash -o pipefail -c "$PY tools/benchmark_backbone.py --arch m4 --device cuda --dtype fp16 --train \
  --ablate --shapes 1x224x224 256x224x224 --warmup 10 --repeats 20 | tee '$OUT/backbone_m4_ablations_fp16.md'"
step training_iterations $B configs/baselines/retinanet_r50_fpn_coco.py configs/retinanet_evit_m4.py \
  configs/baselines/fpn_r50_ade20k.py configs/fpn_evit_m4_ade20k.py --modes train --batch-size 8 --repeats 20 \
  --json "$OUT/training_iterations_b8_fp16.json"

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed steps: ${FAILED[*]}"
  exit 1
fi
