"""``tfmq-export bench``: plan the variants, time them side by side, report."""
