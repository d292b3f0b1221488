"""The scoring layer: the referee, the non-sensitive rate, realism, coverage, FD and FID."""
