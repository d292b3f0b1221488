"""Datasets: the adapter interface and registry (``base``) and the built-in adapters (``datasets``)."""

import pudm_bench.data.datasets  # noqa: F401  (registers the built-in adapters on import)
import pudm_bench.data.pufolder  # noqa: F401  (registers pufolder)
from pudm_bench.data.base import (
    DatasetAdapter,
    DatasetParts,
    ImageSource,
    TensorSource,
    check_options,
    dataset_names,
    get_dataset,
    load_plugins,
    register_dataset,
)

__all__ = [
    "DatasetAdapter",
    "DatasetParts",
    "ImageSource",
    "TensorSource",
    "check_options",
    "dataset_names",
    "get_dataset",
    "load_plugins",
    "register_dataset",
]
