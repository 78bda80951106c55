"""Metrics registered by evit_mm."""
from .accuracy import TopKAccuracy

__all__ = ['TopKAccuracy']
