"""The results store: an embedded SQLite database of runs and measured records."""

from harness.records.merge import MergeSummary, merge_stores
from harness.records.runinfo import collect_run_info
from harness.records.store import SCHEMA_VERSION, ResultStore

__all__ = ["SCHEMA_VERSION", "MergeSummary", "ResultStore", "collect_run_info", "merge_stores"]
