"""Throughput measurement (ratios measured in one run, never timed unit tests)."""
from .timing import Timing, time_interleaved

__all__ = ['Timing', 'time_interleaved']
