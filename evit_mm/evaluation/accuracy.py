"""Top-k classification accuracy for mmengine's evaluator."""
from __future__ import annotations

from collections.abc import Sequence

from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-k accuracy in percent (``top1``, ``top5``, ...) of ``pred_score`` against ``gt_label``.

    A k at least the number of classes counts every sample as a hit (the label is among all classes).

    Args:
        topk: The k values. Defaults to ``(1, 5)``.
        prefix: Metric-name prefix. Defaults to ``'accuracy'``.
    """

    default_prefix = 'accuracy'

    def __init__(self, topk: Sequence[int] = (1, 5), collect_device: str = 'cpu', prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)
        if (not self.topk or len(set(self.topk)) != len(self.topk)
                or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.topk)):
            raise ValueError(f'topk must be distinct positive ints, e.g. (1, 5), got {topk!r}')

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            scores = sample['pred_score']
            k = min(max(self.topk), scores.numel())
            top = scores.topk(k).indices.cpu()
            self.results.append((top, int(sample['gt_label'])))

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = {}
        for k in self.topk:
            hits = sum(int(label in top[:k].tolist()) for top, label in results)
            metrics[f'top{k}'] = 100.0 * hits / max(len(results), 1)
        return metrics
