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
