"""The evaluation protocol (fixed eval split, seeds, Wilson intervals, per-task tables, videos,
results JSON) and its progress bar."""
