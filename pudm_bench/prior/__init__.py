"""The class-prior layer: the BBE estimator and the filter baseline."""
