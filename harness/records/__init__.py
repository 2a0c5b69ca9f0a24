"""The results store: an embedded SQLite database of runs and measured records."""

from harness.records.runinfo import collect_run_info
from harness.records.store import SCHEMA_VERSION, ResultStore

__all__ = ["SCHEMA_VERSION", "ResultStore", "collect_run_info"]
