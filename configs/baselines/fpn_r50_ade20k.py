# Baseline for benchmarks (tools/benchmark.py): mmseg's own Semantic FPN R50 ADE20K 512x512 config, unchanged.
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py']
