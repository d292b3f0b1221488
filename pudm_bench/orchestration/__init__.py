"""Orchestration: the only layer that imports Ray. Settings and preflight, the cluster, the Train worker, the Tune
trial and searchers, the MLflow callback, the shared runner, and the sweep and benchmark drivers
(docs/architecture.md)."""
