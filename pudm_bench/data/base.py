"""Dataset adapter interface and registry.

An adapter turns one dataset on disk (or bundled, like scikit-learn's digits) into two ``ImageSource`` objects, a
``train`` part and a ``test`` part. A source knows every image's integer label and the class *names* up front,
and reads pixels only for the indices a split asks for, so large datasets (CelebA) never sit in memory whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import torch

from pudm_bench.errors import ConfigError, unknown_name


class ImageSource(Protocol):
    """One part (train or test) of a dataset.

    ``labels``: int64 tensor (N,) of class indices into ``class_names``.
    ``images(indices)``: uint8 tensor (n, C, H, W) for those indices, at the dataset's native size.
    """

    class_names: tuple[str, ...]
    labels: torch.Tensor

    def images(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorSource:
    """An ImageSource whose images are already an in-memory uint8 tensor (N, C, H, W)."""

    all_images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.all_images.dtype != torch.uint8 or self.all_images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.all_images.dtype} {tuple(self.all_images.shape)}")
        if self.labels.shape != (self.all_images.shape[0],):
            raise ValueError("labels must be (N,) and match the number of images")

    def images(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        return self.all_images[torch.as_tensor(indices, dtype=torch.long)]


@dataclass(frozen=True)
class DatasetParts:
    """What an adapter returns: the dataset's train and test parts (same class names)."""

    train: ImageSource
    test: ImageSource


@dataclass(frozen=True)
class DatasetAdapter:
    """A registered dataset.

    ``load(root, download, options) -> DatasetParts``; ``root`` is None only for bundled data.
    ``class_names(options, root)`` answers without reading pixels (used to validate split files).
    ``option_names``: the keys a split may set under ``dataset_options``.
    """

    name: str
    load: Callable[[Path | None, bool, Mapping], DatasetParts]
    class_names: Callable[[Mapping, Path | None], tuple[str, ...]]
    option_names: tuple[str, ...] = ()
    needs_root: bool = True
    description: str = ""
    # Data that comes as PU bags rather than classes (``pufolder``): ``pu_bags(root, options)`` returns the
    # unlabeled and labeled sensitive images as they are (``pudm_bench.data.pufolder.PUBags``); ``load`` then gives
    # only the labeled held-out images the referee and the test sets use.
    pu_bags: Callable[[Path, Mapping], object] | None = None


_REGISTRY: dict[str, DatasetAdapter] = {}
# Plug-in packages add datasets without editing this one: in their pyproject.toml,
#   [project.entry-points."pudm_bench.datasets"]
#   my_data = "my_package.adapters:ADAPTER"      # a DatasetAdapter, a list of them, or a function returning either
ENTRY_POINT_GROUP = "pudm_bench.datasets"
_plugins_loaded = False


def register_dataset(adapter: DatasetAdapter) -> DatasetAdapter:
    """Add an adapter; a second adapter under the same name is refused rather than silently replacing the first."""
    if adapter.name in _REGISTRY:
        raise ConfigError(f"dataset {adapter.name!r} is already registered; pick another name")
    _REGISTRY[adapter.name] = adapter
    return adapter


def load_plugins() -> None:
    """Register the adapters of every installed ``pudm_bench.datasets`` entry point (once per process).

    An entry point may name a ``DatasetAdapter``, a list of them, or a function returning either; a plug-in
    module that calls ``register_dataset`` itself on import is fine too. A plug-in that fails to import, returns
    something else, or reuses a taken name is an error naming the entry point.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        where = f"dataset plug-in {entry.name!r} ({entry.value}, entry-point group {ENTRY_POINT_GROUP})"
        try:
            loaded = entry.load()
            adapters = loaded() if callable(loaded) and not isinstance(loaded, DatasetAdapter) else loaded
        except Exception as exc:  # noqa: BLE001 - any import-time error of third-party code
            raise ConfigError(f"{where} failed to load: {type(exc).__name__}: {exc}") from None
        for adapter in [adapters] if isinstance(adapters, DatasetAdapter) else list(adapters or []):
            if not isinstance(adapter, DatasetAdapter):
                raise ConfigError(f"{where} gave {type(adapter).__name__}, expected pudm_bench.data.DatasetAdapter")
            if _REGISTRY.get(adapter.name) is adapter:
                continue  # the plug-in registered it itself on import
            try:
                register_dataset(adapter)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None


def get_dataset(name: str) -> DatasetAdapter:
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, _REGISTRY)
    return _REGISTRY[name]


def dataset_names() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def check_options(adapter: DatasetAdapter, options: Mapping) -> None:
    for key in options:
        if key not in adapter.option_names:
            raise unknown_name("dataset_options key", key, adapter.option_names or ["(none)"], f"dataset {adapter.name}")
