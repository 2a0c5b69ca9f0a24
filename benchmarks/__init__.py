"""pytest-benchmark measurements (ratios to plain passes; nothing asserts wall time)."""
