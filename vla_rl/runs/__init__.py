"""A training run's life: the settings methods share (RunConfig), setup, eval points and the
results file, the one checkpoint mechanism, metrics and plots."""
