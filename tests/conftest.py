"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


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
    from pudm_bench.data.splits import build_split, get_split

    return build_split(get_split("digits_even"), seed=0)


@pytest.fixture(scope="session")
def digits_referee(digits_even_split):
    from pudm_bench.referee import get_referee

    return get_referee(digits_even_split.spec)
