"""Ray start-up: join a cluster or start a local one, with the environment every trial process needs."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import ray

from pudm_bench.errors import ConfigError, PudmError
from pudm_bench.orchestration.placement import ClusterShape

DASHBOARD_PORT = 8265  # Ray's default

# Ray Train's controller takes each worker's reports, and sees that the workers finished, only when it polls them:
# every 2 s by default, so every trial ended ~4 s after its last report (two polls: the final result, then "done").
# Polling every 0.5 s costs the controller one small RPC per poll. Measured in docs/performance.md.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}

# Ray Train 2.60 starts a PreemptionWatcher actor beside every trial's workers: it polls Ray for nodes being drained
# (spot instances) so a preempted worker group is reported as such. A local cluster of our own is one machine that
# nobody drains, so there the actor is one more Ray process per trial (started and torn down on the same 2 cores as
# the training) and the source of a `core_worker.cc ... 'PreemptionWatcher' ... max_restarts > 0` error line per
# trial in the console. A joined cluster keeps Ray's default: its nodes may be preemptible.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

# Ray Train 2.60's placement-group cleaner (a detached actor per trial) asks ``ray.util.state`` whether the trial's
# Train controller is gone, without an address; with a second Ray instance on the machine (two sweeps, a sweep beside
# a benchmark, a test beside either) that call raised "Found multiple active Ray instances", the cleaner died, and a
# trial stopped early never freed its Train workers: later trials waited for CPUs until --placement-timeout. The
# state API reads this variable (then RAY_ADDRESS) before guessing, so every process of our cluster is pointed at
# its own dashboard (docs/reliability.md). An environment variable rather than a job runtime_env with a
# worker-process setup hook: that cost ~1 s per new Ray worker process (measured in docs/performance.md).
STATE_API_ENV = "RAY_API_SERVER_ADDRESS"


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
        options: dict = {}
        if local:
            port = dashboard_port()
            options = {"num_cpus": num_cpus, "dashboard_host": "127.0.0.1", "dashboard_port": port}
            # Every process of a local cluster inherits this environment: their state API asks our dashboard.
            os.environ[STATE_API_ENV] = f"http://127.0.0.1:{port}"
            for name, value in LOCAL_TRAIN_ENV.items():
                os.environ.setdefault(name, value)
        else:
            env_vars = {name: os.environ[name] for name in TRAIN_ENV}
            if ":" in ray_address and "://" not in ray_address:  # a GCS address (host:port), not "auto" or ray://
                env_vars["RAY_ADDRESS"] = ray_address
            options = {"runtime_env": {"env_vars": env_vars}}
        # Without --ray-address (or RAY_ADDRESS), "local": a cluster of our own, even when another one on this
        # machine recorded itself in /tmp/ray (ray.init() with no address would join that one).
        context = _init(ray_address, verbose, options)
        # A local dashboard that failed to start (its port taken between dashboard_port's probe and the bind, seen
        # while another cluster's dashboard was still shutting down) leaves Ray running without it: ray.init only logs
        # an error. Without the state API the placement-group cleaner never frees a stopped trial's CPUs, and a
        # --scheduler moasha sweep waits for them forever. One more try on a fresh port, then a one-line refusal.
        if local and not context.dashboard_url:
            ray.shutdown()
            options["dashboard_port"] = port = dashboard_port()
            os.environ[STATE_API_ENV] = f"http://127.0.0.1:{port}"
            context = _init(ray_address, verbose, options)
            if not context.dashboard_url:
                ray.shutdown()
                raise PudmError("Ray's dashboard did not start on 127.0.0.1 (twice; its log: "
                                "/tmp/ray/session_latest/logs/dashboard.log); the sweep needs it to free the CPUs of "
                                "trials it stops. Run the command again once other Ray instances have stopped")
    return ray.cluster_resources().get("GPU", 0) >= 1


def _init(ray_address: str | None, verbose: int, options: dict):
    """``ray.init`` with a one-line error when a new local node misses Ray's start-up window."""
    try:
        return ray.init(address=ray_address or "local", log_to_driver=verbose > 0, **options)
    except Exception as exc:  # Ray raises a bare Exception when its new local node misses its start-up window
        if ray_address or "timed out during startup" not in str(exc):
            raise
        # Ray gives a new local node a fixed 30 s to register with its GCS; on a machine busy with other work
        # (seen on a 2-core VM running a benchmark) that can pass. One line, not Ray's traceback.
        raise PudmError("Ray's local node did not start within Ray's 30 s window (is the machine busy with other "
                        "work?); run the command again, or start a cluster with `ray start --head` and pass "
                        "--ray-address auto") from None


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


def remote_shape(address: str) -> ClusterShape:
    """The alive nodes of the cluster at ``address`` and whether an autoscaler may grow it; the cluster is joined to
    read them and left again (unless this process had already joined it)."""
    joined_here = not ray.is_initialized()
    if joined_here:
        check_ray_address(address)
        try:
            # Quiet: a refusal below must stay one line (Ray logs "Connecting to existing Ray cluster" at INFO).
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except ConnectionError as exc:
            raise ConfigError(f"--ray-address={address!r}: no Ray cluster answers there ({exc}); start one with "
                              "`ray start --head`, or leave --ray-address out for a local cluster") from None
    try:
        nodes = tuple({k: float(v) for k, v in node["Resources"].items()} for node in ray.nodes() if node["Alive"])
        return ClusterShape(nodes=nodes, can_grow=_can_grow(), where=f"the cluster at {address}")
    finally:
        if joined_here:
            ray.shutdown()


def _can_grow() -> bool | None:
    """Whether the cluster's autoscaler may add nodes: its node groups' limits, as Ray Data reads them (Ray exposes
    no public API for this in 2.60, hence the guarded private call); None when they cannot be read. A cluster
    started with ``ray start`` and no autoscaler has no node groups: False."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # another Ray version
        return None
    if not config or not config.node_group_configs:
        return False
    return any(group.max_count == -1 or group.max_count > group.min_count
               for group in config.node_group_configs if group.resources and group.max_count != 0)


def check_ray_address(address: str) -> None:
    """Refuse, within seconds, an address where no cluster answers: ``ray.init`` would retry for minutes first.
    ``auto``: the cluster this machine's ``ray start`` recorded."""
    given = address
    if address == "auto":
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not record.is_file():
            raise ConfigError("--ray-address=auto: no Ray cluster was started on this machine (`ray start --head` "
                              "records one); pass HOST:PORT of the cluster's head, or leave --ray-address out for a "
                              "local cluster")
        address = record.read_text().strip()
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConfigError(f"--ray-address={given}: no Ray cluster answers at {address} ({reason}); start one with "
                          "`ray start --head`, or leave --ray-address out for a local cluster") from None
