"""Security: servers bind 127.0.0.1, nothing is unpickled from files users pass around, YAML builds no objects,
names cannot escape their folders, credentials are never written or printed (docs/reliability.md, "Security")."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pudm_bench.cli import sweep
from pudm_bench.data.splits import load_split_file
from pudm_bench.errors import ConfigError, PudmError
from pudm_bench.orchestration import callbacks, cluster
from pudm_bench.orchestration import settings as run_settings
from pudm_bench.search.space import load_search_space
from pudm_bench.tracking import check_experiment_name, redact
from pudm_bench.training.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import isolate_start_ray_env

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs ``touch <marker>``: the attack a pickled checkpoint or weights file can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------------------------- servers


def test_a_local_ray_cluster_binds_its_dashboard_to_localhost(monkeypatch):
    isolate_start_ray_env(monkeypatch)
    seen = {}
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: seen.update(kwargs) or SimpleNamespace(dashboard_url="x"))
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    cluster.start_ray(None, 2, 0)
    assert seen["dashboard_host"] == "127.0.0.1" and seen["address"] == "local"  # never another cluster
    # The cluster's processes (they inherit this environment) ask that dashboard, and no other Ray instance on the
    # machine, for the state of actors (Ray Train's placement-group cleaner: docs/reliability.md).
    assert os.environ[cluster.STATE_API_ENV] == f"http://127.0.0.1:{seen['dashboard_port']}"
    # ... and no Train run of it starts a preemption watcher: nobody drains the one node of a local cluster.
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"


@pytest.mark.parametrize("address, pinned", [("10.0.0.5:6379", "10.0.0.5:6379"), ("auto", None),
                                             ("ray://10.0.0.5:10001", None)])
def test_a_joined_clusters_jobs_ask_that_cluster_for_actor_state(monkeypatch, address, pinned):
    """A joined cluster's processes do not inherit the driver's environment: the job's env_vars carry its GCS
    address when the user named one ('auto' resolves on the cluster; a Ray Client address is no GCS address)."""
    isolate_start_ray_env(monkeypatch)
    seen = {}
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: seen.update(kwargs) or SimpleNamespace(dashboard_url=None))
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    cluster.start_ray(address, None, 0)  # a joined cluster's dashboard is its owner's business: no retry, no refusal
    env_vars = seen["runtime_env"]["env_vars"]
    assert env_vars.get("RAY_ADDRESS") == pinned
    assert env_vars["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == cluster.TRAIN_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    assert cluster.STATE_API_ENV not in os.environ  # a local cluster's dashboard address is not for a joined one
    # A joined cluster's nodes may be preemptible: Ray Train keeps its preemption watcher there.
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ and "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in env_vars


def test_a_local_dashboard_that_failed_to_start_is_started_again_on_a_fresh_port_then_refused(monkeypatch):
    """ray.init only logs when the dashboard fails (its port taken by a dying cluster's dashboard, 2026-12-07):
    without it a stopped trial never frees its CPUs. start_ray tries once more on a fresh port, pointing the
    cluster's processes at it, and refuses in one line if that fails too."""
    isolate_start_ray_env(monkeypatch)
    calls, shutdowns, free_ports = [], [], iter([41001, 41002, 41003, 41004])
    urls = iter([None, "127.0.0.1:41002", None, None])
    monkeypatch.setattr(cluster, "dashboard_port", lambda host="127.0.0.1": next(free_ports))
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kw: calls.append(kw) or SimpleNamespace(dashboard_url=next(urls)))
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: shutdowns.append(1))
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    cluster.start_ray(None, 2, 0)
    assert [c["dashboard_port"] for c in calls] == [41001, 41002] and len(shutdowns) == 1
    assert os.environ[cluster.STATE_API_ENV] == "http://127.0.0.1:41002"  # the processes ask the dashboard that runs
    with pytest.raises(PudmError, match="dashboard did not start") as refused:
        cluster.start_ray(None, 2, 0)
    assert "\n" not in str(refused.value) and len(shutdowns) == 3  # no cluster left behind


def test_the_train_variables_the_sweep_sets_are_the_ones_ray_train_reads():
    """Ray Train reads these names (a rename in a Ray upgrade would silently undo the settings above)."""
    from ray.train.v2._internal import constants

    assert set(cluster.TRAIN_ENV) | set(cluster.LOCAL_TRAIN_ENV) == {constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR,
                                                                    constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR}


def test_a_second_local_cluster_gets_another_dashboard_port(monkeypatch):
    """Two sweeps on one machine: the second's dashboard must not need the port the first one holds."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(cluster, "DASHBOARD_PORT", taken)
        port = cluster.dashboard_port()
        assert port != taken and port > 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as free:
        free.bind(("127.0.0.1", 0))
        unused = free.getsockname()[1]
    monkeypatch.setattr(cluster, "DASHBOARD_PORT", unused)
    assert cluster.dashboard_port() == unused  # the default, when it is free


def test_the_mlflow_server_helper_binds_to_localhost(monkeypatch):
    spec = importlib.util.spec_from_file_location("screenshots", REPO / "docs" / "screenshots.py")
    screenshots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshots)
    started = []

    class Server:
        def kill(self):
            pass

    class Healthy:
        status = 200

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(screenshots.subprocess, "Popen", lambda args, **kw: started.append(args) or Server())
    monkeypatch.setattr(screenshots.urllib.request, "urlopen", lambda url, timeout: Healthy())
    screenshots.start_server("sqlite:///x.db", 5123)
    args = started[0]
    assert args[args.index("--host") + 1] == "127.0.0.1"


# --------------------------------------------------------------------------------------- no unpickling


def tiny_state():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler, torch.Generator().manual_seed(0)


def test_checkpoints_hold_only_safetensors_and_json(tmp_path):
    model, optimizer, scheduler, generator = tiny_state()
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, lr_scheduler=scheduler,
                           generator=generator, ema=None, config={})
    assert {p.suffix for p in path.iterdir()} <= {".safetensors", ".json"}


def test_a_pickle_in_place_of_a_checkpoint_is_refused_without_running_it(tmp_path):
    model, optimizer, scheduler, generator = tiny_state()
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, lr_scheduler=scheduler,
                           generator=generator, ema=None, config={})
    marker = tmp_path / "pwned"
    (path / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ConfigError, match="unreadable"):
        load_checkpoint(path, model=model, optimizer=optimizer, lr_scheduler=scheduler, generator=generator, ema=None)
    assert not marker.exists()


def test_a_pickle_in_place_of_fid_weights_is_refused_without_running_it(tmp_path):
    from pudm_bench.scoring.fid import load_inception

    marker = tmp_path / "pwned"
    weights = tmp_path / "pt_inception.pth"
    torch.save({"x": Payload(marker)}, weights)  # a torch.save file whose unpickling would run the payload
    with pytest.raises(ConfigError, match="not a pytorch-fid Inception weights file"):
        load_inception(weights, dims=64)
    assert not marker.exists()


def test_saved_pipelines_and_referees_are_safetensors(tmp_path, digits_even_split, digits_referee, isolated_cache):
    from pudm_bench.training.config import SampleConfig, TrainConfig
    from pudm_bench.training.loop import save_pipeline, train

    config = TrainConfig(method="unsupervised", steps=2, batch_size=16, warmup_steps=0, log_every=1,
                         checkpoint_every=2, sample=SampleConfig(num_images=1, steps=1))
    result = train(config, digits_even_split, tmp_path / "run", resume=False)
    pipeline = save_pipeline(result, tmp_path / "run")
    weights = [p.name for p in pipeline.rglob("*") if p.is_file() and p.suffix not in (".json", ".txt", ".md")]
    assert weights and all(name.endswith(".safetensors") for name in weights), weights
    cached = [p.name for p in (isolated_cache / "referees").iterdir()]
    assert cached and {Path(name).suffix for name in cached} <= {".safetensors", ".json", ".lock"}, cached


# ------------------------------------------------------------------------------------------------- YAML


TAG = "!!python/object/apply:os.system [\"touch {marker}\"]"


def test_yaml_tags_that_build_objects_are_refused_in_every_user_file(tmp_path):
    marker = tmp_path / "pwned"
    split = tmp_path / "split.yaml"
    split.write_text(f"name: evil\ndataset: {TAG.format(marker=marker)}\n")
    space = tmp_path / "space.yaml"
    space.write_text(f"method: pu\nparams:\n  beta: {TAG.format(marker=marker)}\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: evil\nsplits: [digits_even]\nmethods: {TAG.format(marker=marker)}\n")
    from pudm_bench.search.suites import load_suite

    for load, path in ((load_split_file, split), (load_search_space, space), (load_suite, suite)):
        with pytest.raises(ConfigError, match="asks to build a Python object"):
            load(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ path traversal


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc/passwd", "..", "x\\y", ""])
def test_names_that_would_escape_their_folder_are_refused(name):
    with pytest.raises(ConfigError):
        run_settings.check_name(name, "--name")
    with pytest.raises(ConfigError):
        check_experiment_name(name)


def test_benchmark_names_are_checked_like_sweep_names(tmp_path, capsys):
    from pudm_bench.cli.benchmark import main

    assert main(["--name", "../../escape", "--storage", str(tmp_path / "store"), "--dry-run"]) == 2
    assert "--name='../../escape' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_a_split_name_is_looked_up_never_opened_as_a_path(tmp_path, capsys):
    secret = tmp_path / "secret.yaml"
    secret.write_text("name: secret\n")
    assert sweep.main(["--split", str(secret.with_suffix("")), "--storage", str(tmp_path / "s"), "--dry-run"]) == 2
    assert "unknown split" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("uri,hidden", [
    ("http://alice:s3cret@mlflow.internal:5000", "s3cret"),
    ("https://bob:p%40ss@host/path?x=1", "p%40ss"),
    ("http://host:5000/?token=abc123&run=1", "abc123"),
    ("databricks://profile?password=hunter2", "hunter2"),
])
def test_tracking_uris_are_redacted(uri, hidden):
    shown = redact(uri)
    assert hidden not in shown and "***" in shown


def test_the_sweep_state_file_holds_no_credentials(tmp_path):
    args = sweep.build_parser().parse_args(["--storage", str(tmp_path), "--budget", "smoke"])
    settings = replace(sweep.settings_from_args(args), mlflow_uri="http://alice:s3cret@127.0.0.1:5000")
    written = run_settings.write_state(settings, parent_run_id="p")
    text = settings.state_file.read_text()
    assert "s3cret" not in text and "alice:***@127.0.0.1" in text
    assert "s3cret" not in written.mlflow_uri  # what trials receive
    assert json.loads(text)["parent_run_id"] == "p"


def test_the_sweep_never_prints_a_password_from_the_tracking_uri(tmp_path, capfd):
    """The CLI's own main in this process; capfd reads the file descriptors, so log handlers' output counts too."""
    from pudm_bench.cli.sweep import main

    code = main(["--dry-run", "--storage", str(tmp_path), "--mlflow-uri", "http://alice:s3cret@127.0.0.1:9"])
    out, err = capfd.readouterr()
    assert code == 0 and "alice" in out  # the settings are printed, the user name with them ...
    assert "s3cret" not in out + err  # ... never the password


def test_the_tracking_callback_pickles_without_the_uri_and_uses_the_drivers_after_restore(monkeypatch):
    callback = callbacks.TrackingCallback("http://alice:s3cret@127.0.0.1:5000", "exp", "s", "parent")
    data = pickle.dumps(callback)  # what Tune writes into the sweep's storage folder
    assert b"s3cret" not in data
    from pudm_bench.tracking import uris

    monkeypatch.setattr(uris, "ACTIVE_URI", "http://alice:s3cret@127.0.0.1:5000")
    assert pickle.loads(data).tracking_uri() == "http://alice:s3cret@127.0.0.1:5000"
    # The resumed sweep in tests/test_reliability.py checks the real case: a driver run as __main__, whose
    # classes Ray pickles by value (a class attribute on the copy would be unset; the module attribute is not).
    assert callback.tracking_uri() == "http://alice:s3cret@127.0.0.1:5000"
