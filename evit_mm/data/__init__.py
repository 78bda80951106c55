"""Deterministic demo datasets in the standard COCO, ADE20K and ImageNet layouts."""
