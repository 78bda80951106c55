"""TopKAccuracy, the ImageNet configs' metric, on hand-made scores."""
from __future__ import annotations

import pytest
import torch

from evit_mm.evaluation import TopKAccuracy


def _samples(scores: list[list[float]], labels: list[int]) -> list[dict]:
    return [dict(pred_score=torch.tensor(s), gt_label=torch.tensor(label)) for s, label in zip(scores, labels)]


def test_counts_hits_in_the_top_k_scores():
    scores = [[0.1, 0.7, 0.2, 0.0],   # label 1: rank 1
              [0.5, 0.1, 0.3, 0.1],   # label 2: rank 2
              [0.4, 0.3, 0.2, 0.1],   # label 3: rank 4
              [0.2, 0.3, 0.1, 0.4]]   # label 0: rank 3
    metric = TopKAccuracy(topk=(1, 2, 3))
    metric.process(None, _samples(scores[:2], [1, 2]))  # two batches, as an evaluator feeds them
    metric.process(None, _samples(scores[2:], [3, 0]))
    assert metric.compute_metrics(metric.results) == {'top1': 25.0, 'top2': 50.0, 'top3': 75.0}


def test_k_beyond_the_classes_counts_every_sample():
    metric = TopKAccuracy(topk=(1, 5))
    metric.process(None, _samples([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]], [0, 2]))
    assert metric.compute_metrics(metric.results) == {'top1': 50.0, 'top5': 100.0}


def test_evaluate_prefixes_the_names():
    metric = TopKAccuracy(topk=(1,))
    metric.process(None, _samples([[0.2, 0.8]], [1]))
    assert metric.evaluate(1) == {'accuracy/top1': 100.0}


@pytest.mark.parametrize('topk', [(), (0, 5), (1, 1), (1, 2.0), (-1,), (True,)])
def test_invalid_topk_raises(topk):
    with pytest.raises(ValueError, match=r'topk must be distinct positive ints, e.g. \(1, 5\), got'):
        TopKAccuracy(topk=topk)
