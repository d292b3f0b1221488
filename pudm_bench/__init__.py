"""pudm_bench: hyperparameter search and benchmarks for positive-unlabeled diffusion models."""

__version__ = "0.1.0"
