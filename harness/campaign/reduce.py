"""Moved to :mod:`harness.metrics.reduce` (the one reduction, shared with ``harness.metrics.evaluate``);
this name stays only for ``benchmarks/test_fault_bench.py`` until it imports from there."""

from harness.metrics.reduce import CHUNK_BYTES, BatchStats, combine, reduce_batch

__all__ = ["CHUNK_BYTES", "BatchStats", "combine", "reduce_batch"]
