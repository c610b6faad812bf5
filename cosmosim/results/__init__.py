"""What engines report: per-token records, the metric catalogue, the summary built from it, timelines."""
