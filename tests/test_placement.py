"""Where trials can run, decided before any work (orchestration/placement.py): the budget ``auto`` picks from the
cluster's GPUs with its GPU-hours estimate, and a trial whose workers can never be placed is refused on a fixed
cluster, a warning with a bounded wait on one that can grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pudm_bench.cli import sweep as sweep_cli
from pudm_bench.data.splits import get_split
from pudm_bench.errors import ConfigError
from pudm_bench.orchestration.placement import (ClusterShape, budget_for_cluster, check_placement, cluster_shape,
                                                place_bundles)
from pudm_bench.search.budgets import ASSUMED_GPU_TFLOPS, budget_for, describe, forward_flops, run_flops

CPU_NODE = {"CPU": 2.0, "GPU": 0.0}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0}


def shape(*nodes, can_grow=False):
    return ClusterShape(nodes=tuple(nodes), can_grow=can_grow, where="the test cluster")


def test_each_worker_must_fit_on_one_node():
    assert place_bundles([{"CPU": 1.0}, {"CPU": 1.0}], (CPU_NODE,))
    assert not place_bundles([{"CPU": 1.0}] * 3, (CPU_NODE,))
    # Two GPUs in the cluster, but on two nodes: a worker asking for both cannot be placed.
    assert not place_bundles([{"CPU": 1.0, "GPU": 2.0}], (GPU_NODE, GPU_NODE))
    assert place_bundles([{"CPU": 1.0, "GPU": 1.0}] * 2 + [{"CPU": 0.01}], (GPU_NODE, GPU_NODE))


def test_a_trial_that_never_fits_is_refused_on_a_fixed_cluster_and_a_warning_where_it_can_grow():
    assert check_placement(shape(CPU_NODE), workers=2, cpus_per_worker=0.99, gpus_per_worker=0) is None
    with pytest.raises(ConfigError, match=r"a trial needs 1 Train worker x 1 CPU \+ 1 GPU each, but the test cluster "
                                          r"has 2 CPUs and 0 GPUs on 1 node .*could never start"):
        check_placement(shape(CPU_NODE), workers=1, cpus_per_worker=1, gpus_per_worker=1)
    for can_grow in (True, None):  # an autoscaler, or unknown: wait instead of refusing
        warning = check_placement(shape(CPU_NODE, can_grow=can_grow), 1, 1, 1)
        assert "waiting for the autoscaler" in warning and "--placement-timeout" in warning


def test_budget_auto_follows_the_clusters_gpus():
    asked = []

    def shape_of(nodes):
        return lambda: asked.append(1) or shape(*nodes)

    assert budget_for_cluster("auto", shape_of([CPU_NODE]), None) == ("cpu", "auto: no GPU in the test cluster")
    assert budget_for_cluster("auto", shape_of([GPU_NODE, GPU_NODE]), None) == ("paper", "auto: 2 GPUs in the test cluster")
    assert budget_for_cluster("auto", shape_of([GPU_NODE]), 0.0) == ("cpu", "auto: --gpus-per-worker 0")
    assert budget_for_cluster("smoke", shape_of([GPU_NODE]), None) == ("smoke", "requested")
    assert len(asked) == 2  # the cluster is asked only when auto needs it


def test_the_gpu_hours_estimate_counts_training_and_sampling_flops():
    split = get_split("stl10_vehicles")
    budget = budget_for("paper", split)
    forward = forward_flops("paper", 96, 3)
    assert forward_flops("paper", 96, 3) > 8 * forward_flops("paper", 32, 3)  # 9x the pixels
    assert run_flops(budget, split) == forward * (3 * budget.steps * budget.batch_size
                                                  + budget.num_samples * budget.sample_steps)
    hours = 26 * run_flops(budget, split) / (ASSUMED_GPU_TFLOPS * 1e12) / 3600
    line = describe(budget, split, 26, "auto: 4 GPUs in the test cluster", gpus=1.0)
    assert f"about {hours:.2g} GPU-hours" in line and "7,500 steps at batch 32" in line and "5,000 samples" in line
    assert "GPU-hours" not in describe(budget_for("cpu", split), split, 8, "requested", gpus=0.0)


def dry_run(monkeypatch, tmp_path, gpus: int, *args: str) -> dict:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)  # the local cluster's GPUs, as torch sees them
    parsed = sweep_cli.build_parser().parse_args(["--storage", str(tmp_path / "store"), *args])
    settings = sweep_cli.settings_from_args(parsed)
    return sweep_cli.dry_run(settings, cluster_shape(None, parsed.num_cpus))


def test_stl10_dry_run_shows_the_cpu_budget_on_a_cpu_machine(monkeypatch, tmp_path):
    out = dry_run(monkeypatch, tmp_path, 0, "--dataset", "stl10")
    assert out["settings"]["budget"] == "cpu" and out["settings"]["budget_choice"] == "auto: no GPU in the local cluster"
    assert out["plan"].startswith("budget cpu (auto: no GPU in the local cluster): 300 steps")
    assert out["resources_per_trial"]["gpus_per_worker"] == 0.0 and "GPU-hours" not in out["plan"]


def test_stl10_dry_run_on_a_gpu_machine_shows_the_paper_budget_and_its_gpu_hours(monkeypatch, tmp_path):
    out = dry_run(monkeypatch, tmp_path, 4, "--dataset", "stl10", "--trials", "24")
    assert out["settings"]["budget"] == "paper" and out["settings"]["name"] == "stl10_vehicles-default-paper-s0"
    assert out["plan"].startswith("budget paper (auto: 4 GPUs in the local cluster): 7,500 steps at batch 32")
    assert "26 runs" in out["plan"] and "GPU-hours at an assumed" in out["plan"]
    assert out["resources_per_trial"]["gpus_per_worker"] == 1.0


def test_a_faked_gpu_cluster_gets_the_gpu_budget_and_refuses_what_it_cannot_place(tmp_path, capsys, monkeypatch):
    """A Ray cluster that declares 2 GPUs (none exist: Ray takes the declaration), joined with --ray-address. The
    dry runs are the CLI's own ``main`` in this process (each joins the cluster, reads it and leaves): the same code
    as ``python -m pudm_bench.sweep``, without a new interpreter's imports each time."""
    from ray.cluster_utils import Cluster

    from pudm_bench.orchestration.cluster import dashboard_port

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 4, "num_gpus": 2, "include_dashboard": False,
                                      "dashboard_port": dashboard_port(),
                                      "env_vars": {"RAY_AUTH_MODE": "disabled"}})
    try:
        def run(*args):
            code = sweep_cli.main(["--dataset", "stl10", "--dry-run", "--storage", str(tmp_path / "store"),
                                   "--ray-address", cluster.address, *args])
            out, err = capsys.readouterr()
            return code, out, err

        code, out, err = run()
        assert code == 0, err[-2000:]
        out = json.loads(out)
        assert out["settings"]["budget"] == "paper" and "GPU-hours" in out["plan"]
        assert out["settings"]["budget_choice"] == f"auto: 2 GPUs in the cluster at {cluster.address}"
        assert out["resources_per_trial"]["gpus_per_worker"] == 1.0
        # 4 workers of 1 GPU on a cluster of 2 GPUs and no autoscaler: refused in one line.
        code, _, err = run("--workers-per-trial", "4")
        assert code == 2 and err.strip().count("\n") == 0
        assert "a trial needs 4 Train workers x 1 CPU + 1 GPU each" in err
        assert f"the cluster at {cluster.address} has 4 CPUs and 2 GPUs" in err
        # The user says the cluster grows: a warning and a bounded wait instead.
        code, out, err = run("--workers-per-trial", "4", "--placement-timeout", "120")
        assert code == 0, err[-2000:]
        out = json.loads(out)
        assert "waiting for the autoscaler" in out["placement_warning"]
        assert out["resources_per_trial"]["placement_timeout_s"] == 120
        assert not (tmp_path / "store").exists()  # a dry run writes nothing
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_a_trial_whose_workers_are_never_placed_fails_after_the_placement_timeout(tmp_path, mlflow_store,
                                                                                 session_referees):
    """--placement-timeout: 4 workers of 1 CPU on a local cluster of 2 are never placed; instead of Ray Train's
    endless retries the trial fails after the timeout with that reason, and the sweep ends."""
    from tests.helpers import read_back

    session_referees(tmp_path / "store" / "wait" / "cache")  # digits_even's referees: not under test
    done = subprocess.run(
        [sys.executable, "-m", "pudm_bench.sweep", "--budget", "smoke", "--trials", "1", "--no-baselines",
         "--num-cpus", "2", "--workers-per-trial", "4", "--cpus-per-worker", "1", "--placement-timeout", "5",
         "--name", "wait", "--storage", str(tmp_path / "store"), "--mlflow-uri", mlflow_store, "--quiet"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[prepare] warning: a trial needs 4 Train workers x 1 CPU each" in done.stdout
    _, _, children = read_back(mlflow_store, "pudm-digits_even")
    (trial,) = children
    assert trial.info.status == "FAILED"
    assert trial.data.tags["pudm.error"].startswith("PlacementTimeout: the 4 Train worker(s) of this trial were not "
                                                    "placed within 5 s")


def test_a_local_ray_node_that_misses_its_start_up_window_is_one_line(monkeypatch):
    """Ray gives a new local node a fixed 30 s to register and raises a bare Exception after that (seen on this
    2-core VM while a benchmark ran): one line naming what to do; a cluster the user named keeps Ray's error."""
    import ray

    from pudm_bench.errors import PudmError
    from pudm_bench.orchestration import cluster
    from tests.helpers import isolate_start_ray_env

    isolate_start_ray_env(monkeypatch)

    def init(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(PudmError, match="did not start within Ray's 30 s window") as caught:
        cluster.start_ray(None, 2, verbose=0)
    assert "ray start --head" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(Exception, match="timed out during startup"):
        cluster.start_ray("10.0.0.1:6379", None, verbose=0)
