"""MLflow tracking of sweeps: one parent run per sweep, one child run per trial, the Pareto front on the parent.

The only package that imports mlflow. Everything goes through an explicit
``MlflowClient(tracking_uri=...)``, so the process-wide tracking URI (``mlflow.set_tracking_uri``) is never read
or changed here. Only the Ray driver writes (``SweepTracker`` is called from a Tune callback there): SQLite must
be written by one process; workers that must log themselves need an MLflow server.

Layout in the store (experiment ``pudm-<split>`` by default):
- parent run: tags ``pudm.kind=sweep``, ``pudm.sweep_name``; the sweep settings as params; after the sweep the
  metrics ``hypervolume``, ``hypervolume_ref_rate``, ``hypervolume_ref_quality``, ``pareto_size``, ``n_trials``,
  ``n_failed`` and the artifacts ``pareto_front.json`` (an MLflow table), ``pareto_front.csv``,
  ``all_trials.csv`` and ``pareto.png``;
- child runs: tags ``mlflow.parentRunId``, ``pudm.kind=trial``, ``pudm.trial_id`` (the key: a resumed trial gets
  its old run back, never a second one), ``pudm.role``, ``pudm.error`` for failures; trial params; metrics; the
  per-class coverage as the table ``coverage.json`` and the plot ``coverage.png`` (splits with 2+ normal classes).
- a sweep's further objectives and its constraints are the parent's tags ``pudm.objectives`` (comma-separated)
  and ``pudm.constraints`` (";"-separated), so ``load_sweep`` recomputes the same front.

Read back with ``list_sweeps`` and ``load_sweep`` (``python -m pudm_bench.report``).
"""

from pudm_bench.tracking.reader import list_sweeps, load_sweep, sweep_objectives
from pudm_bench.tracking.uris import check_experiment_name, check_tracking_reachable, redact, resolve_tracking_uri
from pudm_bench.tracking.writer import SweepTracker

__all__ = ["SweepTracker", "check_experiment_name", "check_tracking_reachable", "list_sweeps", "load_sweep", "redact",
           "resolve_tracking_uri", "sweep_objectives"]
