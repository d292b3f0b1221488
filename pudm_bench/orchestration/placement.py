"""Where trials can run, known before any work: the cluster's nodes and whether it can grow (``ClusterShape``), the
budget ``auto`` picks for it, and the check that refuses a trial whose Train workers could never be placed.

Without this, a request the cluster can never satisfy (2 GPUs per worker on a CPU machine, 3 workers of 1 CPU on a
2-core one) makes Ray Train wait forever, printing a worker-group start-up traceback every minute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from pudm_bench.errors import ConfigError
from pudm_bench.orchestration.settings import TRIAL_DRIVER_CPU, ExecutionSettings

# How long a trial's Train workers may wait to be placed on a cluster that can grow (an autoscaler adds nodes)
# before the trial fails with that reason (--placement-timeout). A fixed cluster is checked up front instead.
DEFAULT_PLACEMENT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ClusterShape:
    """The resources of each node of a Ray cluster (``{"CPU": 2.0, "GPU": 0.0, ...}``) and whether it can grow:
    False for the local cluster and a fixed one, True or None (unknown) for an autoscaling one."""

    nodes: tuple[dict[str, float], ...]
    can_grow: bool | None
    where: str  # "the local cluster" or the address joined

    def total(self, resource: str) -> float:
        return sum(node.get(resource, 0.0) for node in self.nodes)

    def describe(self) -> str:
        largest = max(self.nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        return (f"{self.where} has {self.total('CPU'):g} CPUs and {self.total('GPU'):g} GPUs on {len(self.nodes)} "
                f"node{'s' if len(self.nodes) != 1 else ''} (largest: {largest.get('CPU', 0.0):g} CPUs, "
                f"{largest.get('GPU', 0.0):g} GPUs)")


def local_shape(num_cpus: int | None) -> ClusterShape:
    """The local cluster a run would start: this machine's CPUs (or --num-cpus) and its CUDA GPUs."""
    import torch

    cpus = float(num_cpus or os.cpu_count() or 1)  # what ray.init(num_cpus=None) takes on this machine
    return ClusterShape(nodes=({"CPU": cpus, "GPU": float(torch.cuda.device_count())},), can_grow=False,
                        where="the local cluster")


def cluster_shape(ray_address: str | None, num_cpus: int | None) -> ClusterShape:
    """The shape of the cluster a run will use: the local one, or the one at ``ray_address`` (or $RAY_ADDRESS),
    which is joined to read its nodes and left again (the run joins it for real later)."""
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        return local_shape(num_cpus)
    from pudm_bench.orchestration.cluster import remote_shape  # imports Ray

    return remote_shape(address)


def budget_for_cluster(requested: str, shape_of: Callable[[], ClusterShape],
                       gpus_per_worker: float | None) -> tuple[str, str]:
    """The budget a run uses and why. ``auto``: ``paper`` (the paper's model and schedule, the scores a GPU user came
    for) on a cluster with GPUs, ``cpu`` on one without or when the workers are told to use none
    (--gpus-per-worker 0). ``shape_of()`` is only asked when it matters."""
    if requested != "auto":
        return requested, "requested"
    if gpus_per_worker == 0:
        return "cpu", "auto: --gpus-per-worker 0"
    shape = shape_of()
    gpus = shape.total("GPU")
    if gpus >= 1:
        return "paper", f"auto: {gpus:g} GPU{'s' if gpus != 1 else ''} in {shape.where}"
    return "cpu", f"auto: no GPU in {shape.where}"


def check_batch(batch_size: int, workers: int, what: str) -> None:
    """Each data-parallel worker takes an equal share of the global batch: refuse a worker count that does not divide
    it before any work (the loop would refuse it in every trial, after the referee and Ray start-up)."""
    if batch_size % workers:
        raise ConfigError(f"--workers-per-trial={workers} does not divide the global batch of {batch_size} ({what}); "
                          "each worker takes an equal share: use a divisor of the batch")


def place_bundles(bundles: list[dict[str, float]], nodes: tuple[dict[str, float], ...]) -> bool:
    """Whether every bundle (one per Train worker, plus the trial's own) fits on some node at once, each bundle on
    a single node (Ray places a bundle whole): first-fit decreasing, enough for the few equal bundles of a trial."""
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=lambda b: (b.get("GPU", 0.0), b.get("CPU", 0.0)), reverse=True):
        for node in free:
            if all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()):
                for k, v in bundle.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            return False
    return True


def check_placement(shape: ClusterShape, workers: int, cpus_per_worker: float, gpus_per_worker: float,
                    trial_cpu: float = TRIAL_DRIVER_CPU) -> str | None:
    """Refuse (ConfigError, one line) a trial whose workers can never be placed on a cluster that cannot grow; on one
    that can (or may), return a warning line instead (the trials then wait at most --placement-timeout)."""
    worker = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    if place_bundles([worker] * workers + [{"CPU": trial_cpu}], shape.nodes):
        return None
    request = (f"a trial needs {workers} Train worker{'s' if workers != 1 else ''} x {cpus_per_worker:g} CPU"
               + (f" + {gpus_per_worker:g} GPU" if gpus_per_worker else "") + " each")
    if shape.can_grow is False:
        raise ConfigError(f"{request}, but {shape.describe()}, so it could never start; lower --workers-per-trial, "
                          "--cpus-per-worker or --gpus-per-worker, or pass --ray-address of a larger cluster")
    return (f"{request}, more than {shape.describe()} now; waiting for the autoscaler to add nodes, at most "
            "--placement-timeout per trial")


@dataclass(frozen=True)
class Placement:
    """How a run's trials are placed, decided before any work: GPUs per worker (auto resolved), and how long a trial
    may wait for its workers (None: no bound, on a fixed cluster where every trial was checked to fit)."""

    gpus_per_worker: float
    timeout_s: float | None
    warning: str | None


def plan_placement(settings: ExecutionSettings, shape: ClusterShape) -> Placement:
    """Check that one trial fits ``shape`` (refused in one line on a cluster that cannot grow) and choose the wait.

    ``--placement-timeout`` given: the cluster is taken to be able to grow (the user knows their autoscaler): a
    request larger than it is now is a warning, and each trial waits at most that long for its workers."""
    gpus = settings.gpus_per_worker
    if gpus is None:  # auto: one GPU per worker where the cluster has any
        gpus = 1.0 if shape.total("GPU") >= 1 else 0.0
    if settings.placement_timeout is not None:
        shape = ClusterShape(shape.nodes, True, shape.where)
    warning = check_placement(shape, settings.workers_per_trial, settings.cpus_per_worker, gpus)
    timeout = settings.placement_timeout
    if timeout is None and shape.can_grow is not False:
        timeout = DEFAULT_PLACEMENT_TIMEOUT_S
    return Placement(gpus, timeout, warning)
