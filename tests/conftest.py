"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# `make test` runs two pytest-xdist workers with `--dist loadscope`: each test module is one unit of work (its module
# fixtures, e.g. a sweep read by a dozen tests, are built once), except that tests sharing a session fixture that runs
# a whole sweep (pets_sweep_losing_a_node) join one unit. Only the node-loss test of test_reliability.py joins
# test_adding_a_split.py: the module's two driver/worker kills (~220 s) are a unit of their own, which the other
# worker can run meanwhile.
SHARED_SCOPES = {
    "tests/test_reliability.py::test_sweep_completes_when_the_node_running_a_trial_is_lost":
        "tests/test_adding_a_split.py",
}

# Seconds the slow tests of each unit take in one process on the 2-core CI machine (pytest --durations, fresh clone,
# docs/performance.md item 9), fixtures included: the slow tier hands out the longest units first (LPT scheduling;
# xdist orders units by number of tests, and gives a worker its next unit while two tests of the current one are
# left, which paired the largest unit with another). A hint for the order only, never a limit; a unit missing here
# counts as 1 s per test. Update it when a slow test changes much.
SLOW_SCOPE_SECONDS = {
    "tests/test_sweep.py": 270,  # the digits sweep fixture ~115, STL10 ~101, stopping trials ~53
    "tests/test_reliability.py": 221,  # the driver killed ~114, the failing/killed-worker sweep ~107
    "tests/test_benchmark.py": 91,
    "tests/test_adding_a_split.py": 85,  # the pets node-loss sweep, shared with test_reliability.py's check
    "tests/test_latent.py": 59,
    "tests/test_placement.py": 42,
    "tests/test_fid.py": 3,
}


def scope_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the unit SHARED_SCOPES joins it to."""
    module = nodeid.split("::", 1)[0]
    for prefix, scope in SHARED_SCOPES.items():
        if nodeid == prefix or nodeid.startswith(prefix + "["):
            return scope
    return module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Module scopes (xdist's loadscope), with SHARED_SCOPES joined, handed out in collection order (sorted below).
    (Not loadgroup + xdist_group marks: with pytest 9.2 xdist 3.8 no longer sees the groups, pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    # xdist would re-sort the units by their number of tests; the collection order below is by cost instead.
    config.option.loadscopereorder = False

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ModuleScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """The selected tests (after -m and -k) in units of work, most costly unit first, each unit's tests together,
    the order otherwise unchanged: under xdist the longest units are handed out first and the short ones fill in
    beside them. A unit with a selected slow test costs its SLOW_SCOPE_SECONDS, any other one test per second (in
    the fast tier: xdist's own order by number of tests)."""
    result = yield
    has_slow: dict[str, bool] = {}
    count: dict[str, int] = {}
    for item in items:
        scope = scope_of(item.nodeid)
        count[scope] = count.get(scope, 0) + 1
        has_slow[scope] = has_slow.get(scope, False) or item.get_closest_marker("slow") is not None

    def cost(scope: str) -> float:
        return SLOW_SCOPE_SECONDS.get(scope, count[scope]) if has_slow[scope] else count[scope]

    first = {}
    for index, item in enumerate(items):
        first.setdefault(scope_of(item.nodeid), index)
    items.sort(key=lambda item: (-cost(scope_of(item.nodeid)), first[scope_of(item.nodeid)]))  # stable
    return result


@pytest.fixture(autouse=True, scope="session")
def ray_dashboard_port_held():
    """Hold Ray's default dashboard port (127.0.0.1:8265) for the session, so every Ray cluster a test starts takes
    a port the OS picks (orchestration.cluster.dashboard_port): two xdist workers starting clusters at the same
    moment would otherwise both see 8265 free and one of them fail. If something already holds it, so much the
    better."""
    import socket

    from pudm_bench.orchestration.cluster import DASHBOARD_PORT

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.bind(("127.0.0.1", DASHBOARD_PORT))
    except OSError:
        pass
    yield
    held.close()


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread_per_xdist_worker():
    """`make test` runs the tests on two xdist workers: with torch's default 2 intra-op threads each, they would
    oversubscribe 2 cores, and OpenMP's spinning threads then slow small tensor ops many times over
    (docs/performance.md, item 8). A worker uses one thread and passes that on to the processes it starts."""
    import os

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import torch

    old = (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(old[0])
    if old[1] is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old[1]


@pytest.fixture
def relaxed_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision's CIFAR10, STL10 and CelebA loaders accept the tiny files tests write.

    They md5-check each file against the real dataset's; tests write a few images, so only that comparison is
    dropped: each module's ``check_integrity`` still requires the file to exist, and all reading code runs as is.
    (Patching ``_check_integrity`` alone would not do: CIFAR10 md5-checks batches.meta separately.)
    """
    import torchvision.datasets.celeba as celeba
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10
    from torchvision.datasets.utils import check_integrity

    def exists_only(fpath: str, md5: str | None = None) -> bool:
        return check_integrity(fpath, None)

    for module in (cifar, stl10, celeba):
        monkeypatch.setattr(module, "check_integrity", exists_only)


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Referees and FID statistics go to a per-session folder, never the user's ~/.cache; datasets and Inception
    weights are looked for in empty folders unless a test says otherwise; the digits referee is trained once per
    session."""
    import os

    cache = tmp_path_factory.mktemp("pudm_cache")
    data = tmp_path_factory.mktemp("pudm_data")
    torch_home = tmp_path_factory.mktemp("torch_home")  # no Inception weights unless a test puts them there
    old = {k: os.environ.get(k) for k in ("PUDM_BENCH_CACHE", "PUDM_BENCH_DATA", "TORCH_HOME")}
    os.environ["PUDM_BENCH_CACHE"] = str(cache)
    os.environ["PUDM_BENCH_DATA"] = str(data)
    os.environ["TORCH_HOME"] = str(torch_home)
    yield cache
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def digits_even_split():
    from pudm_bench.data.build import build_split
    from pudm_bench.data.splits import get_split

    return build_split(get_split("digits_even"), seed=0)


@pytest.fixture(scope="session")
def digits_referee(digits_even_split):
    from pudm_bench.scoring.referee import get_referee

    return get_referee(digits_even_split.spec)


@pytest.fixture(scope="session")
def session_referees(isolated_cache: Path, digits_referee):
    """``seed(cache_dir)``: copy the referees this session has trained (at least digits_even's) into a sweep's cache
    folder (``<storage>/<sweep name>/cache``), so that a sweep on the same split loads its referee instead of
    training the same one again. For tests about something else (faults, resuming); the sweeps of other tests
    still train theirs."""
    def seed(cache_dir: Path) -> None:
        target = cache_dir / "referees"
        target.mkdir(parents=True, exist_ok=True)
        # Weights first: a referee's JSON marks it complete (referee.save_referee).
        for suffix in (".safetensors", ".json"):
            for path in sorted((isolated_cache / "referees").glob(f"*{suffix}")):
                shutil.copyfile(path, target / path.name)

    return seed


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store (its tables), created once per session: creating one costs every command that
    starts on a fresh file seconds of table creation and migrations (~3-7 s on 2 cores). Use ``mlflow_store``."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def copy_mlflow_store(template: Path, path: Path) -> str:
    """A fresh copy of the empty store at ``path``; returns its tracking URI. Experiments created in it keep their
    artifacts beside it (pudm_bench.tracking), not beside the template."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def mlflow_store(tmp_path: Path, empty_mlflow_store: Path) -> str:
    """Tracking URI of an empty MLflow store at ``tmp_path / "mlflow.db"`` (a copy of the session's)."""
    return copy_mlflow_store(empty_mlflow_store, tmp_path / "mlflow.db")


@pytest.fixture(scope="session")
def pets_sweep_losing_a_node(tmp_path_factory, empty_mlflow_store):
    """One sweep for two slow tests (each a minute or more of Ray start-up, referee and trials on its own):

    - tests/test_adding_a_split.py: a sweep on the image-folder split of docs/adding-a-split.md, taken from the
      page and found through --splits-dir alone;
    - tests/test_reliability.py: the sweep completes when the node running a trial's worker is lost.

    The sweep (``python -m pudm_bench.sweep --split pets_no_dogs --splits-dir DIR``, 1 trial) runs on a
    multi-node ``ray.cluster_utils.Cluster`` and loses a node mid-trial; each test asserts its part of the outcome.
    Returns (sweep output, tracking URI, parent runs, trial runs) of the experiment pudm-pets_no_dogs.
    """
    from tests.helpers import sweep_losing_a_node, write_my_splits

    folder = tmp_path_factory.mktemp("pets_node_loss")
    my_splits = write_my_splits(folder / "my_splits")
    uri = copy_mlflow_store(empty_mlflow_store, folder / "mlflow.db")
    return sweep_losing_a_node(folder, ["--split", "pets_no_dogs", "--splits-dir", str(my_splits)],
                               "pudm-pets_no_dogs", uri)
