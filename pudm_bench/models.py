"""diffusers ``UNet2DModel`` presets, the DDPM noise schedule, and loading pretrained UNets for fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pudm_bench.errors import ConfigError, unknown_name

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

# diffusers is imported where a model is built, not at module import: the preset names are read by split loading
# in processes that never build a model (a sweep's driver, Tune trial actors, Ray Train controllers), and importing
# diffusers costs about 2 s of CPU per process.
NUM_TRAIN_TIMESTEPS = 1000

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


def build_model(preset: str, image_size: int, channels: int, num_class_embeds: int | None = None) -> UNet2DModel:
    """A freshly initialised UNet2DModel from a preset (uses the global torch RNG: seed it first).

    ``num_class_embeds``: a class-conditional model (a learned embedding per condition added to the timestep
    embedding, diffusers' ``class_embed_type=None``), sampled with ``class_labels``.
    """
    from diffusers import UNet2DModel

    if preset not in MODEL_PRESETS:
        raise unknown_name("model preset", preset, MODEL_PRESETS)
    config = MODEL_PRESETS[preset]
    levels = len(config["block_out_channels"])
    if image_size % (2 ** (levels - 1)) != 0:
        raise ConfigError(
            f"image_size={image_size} does not fit model preset {preset!r}: it must be divisible by "
            f"{2 ** (levels - 1)} ({levels} resolution levels); change the split's image_size or model_preset"
        )
    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                       num_class_embeds=num_class_embeds, **config)


def build_noise_scheduler() -> DDPMScheduler:
    """The DDPM training schedule used throughout (Ho et al., 2020): 1,000 steps, linear betas 1e-4..0.02."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear")


def load_pretrained(name_or_path: str, image_size: int, channels: int,
                    num_class_embeds: int | None = None) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load a diffusers UNet2DModel (and its scheduler when present) for fine-tuning.

    Accepts a directory written by ``UNet2DModel.save_pretrained``, a pipeline directory (``DDPMPipeline.
    save_pretrained``: ``unet/`` and ``scheduler/`` sub-folders), or a hub id when the machine can download.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(name_or_path).expanduser()
    if not path.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise ConfigError(f"pretrained model directory {path} does not exist; give a folder written by "
                          "save_pretrained (a UNet or a DDPMPipeline) or a hub id")
    is_pipeline = (path / "unet").is_dir() or not path.exists()
    try:
        if path.exists() and not is_pipeline:
            model = UNet2DModel.from_pretrained(str(path))
            scheduler = build_noise_scheduler()
        else:
            model = UNet2DModel.from_pretrained(str(name_or_path), subfolder="unet")
            try:
                scheduler = DDPMScheduler.from_pretrained(str(name_or_path), subfolder="scheduler")
            except (OSError, ValueError):
                scheduler = build_noise_scheduler()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"could not load pretrained model {name_or_path!r} ({type(exc).__name__}); give a local directory "
            "written by save_pretrained, or a hub id on a machine that can download"
        ) from None
    if model.config.sample_size != image_size or model.config.in_channels != channels:
        raise ConfigError(
            f"pretrained model {name_or_path!r} takes {model.config.in_channels}x{model.config.sample_size}px images "
            f"but the split gives {channels}x{image_size}px; pick a split with matching image_size/channels"
        )
    if model.config.num_class_embeds != num_class_embeds:
        have = model.config.num_class_embeds
        raise ConfigError(
            f"pretrained model {name_or_path!r} is {'unconditional' if have is None else f'conditional on {have} classes'}"
            f" but the split {'has no conditions' if num_class_embeds is None else f'has {num_class_embeds} conditions'}"
            "; pick a split and a model that agree"
        )
    return model, scheduler
