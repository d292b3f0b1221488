"""The named UNet sizes (``model_preset`` in split files and TrainConfig): plain data, below both the split
registry (which validates a split's preset at load time) and the models that build them (``models.py``)."""

from __future__ import annotations

from typing import Any

_DOWN4 = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
_UP4 = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")

# Each preset is the UNet2DModel config minus sample_size and channels, which come from the split.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # ~1.1M parameters; ~0.08 s per batch-64 step on 2 CPU cores at 8x8 (measured, docs/performance.md).
    "digits": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ),
    # The smoke budget's model away from digits: no attention, narrow (a 96 px STL10 step in a fraction of a
    # second on one CPU thread); scores mean little, as smoke runs only check a set-up end to end.
    "tiny": dict(
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8,
    ),
    # A CPU-sized model for 16-32 px smoke runs of the paper's datasets.
    "small": dict(
        block_out_channels=(32, 64, 64, 128),
        layers_per_block=1,
        down_block_types=_DOWN4,
        up_block_types=_UP4,
        norm_num_groups=8,
    ),
    # The paper's from-scratch UNet (MNIST, CIFAR10 at 32 px; STL10 at 96 px): ~61M parameters at 32 px.
    "paper": dict(
        block_out_channels=(128, 128, 256, 512),
        layers_per_block=2,
        down_block_types=_DOWN4,
        up_block_types=_UP4,
    ),
    # For 256 px (CelebA): six levels like diffusers' 256 px DDPM models, so attention runs at 16x16, not 64x64.
    "paper256": dict(
        block_out_channels=(128, 128, 256, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    ),
}
