"""diffusers ``UNet2DModel`` presets, the DDPM noise schedule, and loading pretrained UNets for fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pudm_bench.errors import ConfigError, unknown_name
from pudm_bench.presets import MODEL_PRESETS

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

# diffusers is imported where a model is built, not at module import: importing it costs about 2 s of CPU per
# process, and a sweep's driver, Tune trial actors and Ray Train controllers never build a model.
NUM_TRAIN_TIMESTEPS = 1000



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
