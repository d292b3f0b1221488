"""Ray start-up: join a cluster or start a local one, with the environment every trial process needs."""

from __future__ import annotations

import os
import socket

import ray

DASHBOARD_PORT = 8265  # Ray's default

# Ray Train's controller takes each worker's reports, and sees that the workers finished, only when it polls them:
# every 2 s by default, so every trial ended ~4 s after its last report (two polls: the final result, then "done").
# Polling every 0.5 s costs the controller one small RPC per poll. Measured in docs/performance.md.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def start_ray(ray_address: str | None, num_cpus: int | None, verbose: int) -> bool:
    """Join ``ray_address`` ('auto': a running cluster) or start a local cluster; True when it has a GPU."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Intermediate reports carry training curves only; the objectives come with the final evaluation report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune snapshots its experiment state (trials, searcher) every 10 s or more by default; a trial started after
    # the last snapshot is unknown to a resumed sweep, which then runs its config again under a new trial id. Every
    # 2 s narrows that window at the cost of writing a few kB more often.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    for name, value in TRAIN_ENV.items():  # a local cluster's processes inherit these; a joined one gets them below
        os.environ.setdefault(name, value)
    if not ray.is_initialized():
        ray_address = ray_address or os.environ.get("RAY_ADDRESS") or None
        if ray_address is None:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster of our own: no token prompts
        local = ray_address is None
        # The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner asks its state API
        # whether a stopped trial's controller is gone; without it, early-stopped trials keep their CPUs.
        local_options = ({"num_cpus": num_cpus, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port()}
                         if local
                         else {"runtime_env": {"env_vars": {name: os.environ[name] for name in TRAIN_ENV}}})
        # Without --ray-address (or RAY_ADDRESS), "local": a cluster of our own, even when another one on this
        # machine recorded itself in /tmp/ray (ray.init() with no address would join that one).
        ray.init(address=ray_address or "local", log_to_driver=verbose > 0, **local_options)
    return ray.cluster_resources().get("GPU", 0) >= 1


def dashboard_port(host: str = "127.0.0.1") -> int:
    """Ray's default dashboard port when it is free, else one the OS picks: a second sweep or benchmark on the same
    machine (each starts its own local cluster) would otherwise fail in ``ray.init`` because the first one's
    dashboard holds 8265."""
    for port in (DASHBOARD_PORT, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    return DASHBOARD_PORT
