"""``tfmq-export bench``: plan (variants, file facts), timing (round-robin), memory (peak RSS probe),
report (rows, JSON, terminal line); ``bench_to_json`` runs them in that order."""

from tfmq_export.workflows.bench.report import format_row
from tfmq_export.workflows.bench.run import bench_mode, bench_to_json

__all__ = ["bench_mode", "bench_to_json", "format_row"]
