"""What the loop trains, whatever the model (pixel UNet or latent Stable Diffusion): built fresh, from a pretrained
model or warm-started from another run (``--init-from``, checked against the split), saved for diffusers and loaded
back as an image generator."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from pudm_bench.data.build import BuiltSplit
from pudm_bench.errors import ConfigError
from pudm_bench.training.batches import TrainingSet
from pudm_bench.training.config import TrainConfig
from pudm_bench.training.models import build_model, build_noise_scheduler, load_pretrained
from pudm_bench.training.sampling import PixelGenerator, to_model_range


@dataclass
class Denoiser:
    """What the loop trains, whatever the model: pixel UNet2DModel (``unet``) or latent Stable Diffusion (``sd``).

    ``inputs(idx, generator)`` gives x0 of the batch (pixels in [-1, 1], or a sample of the cached VAE posterior),
    ``context(idx)`` the forward keyword arguments (class labels, or the prompts' text embeddings),
    ``generator()`` an image generator over the current weights (``sampling.PixelGenerator`` interface), and
    ``save(path)`` writes what diffusers' ``from_pretrained`` reloads.
    """

    model: torch.nn.Module
    noise_scheduler: DDPMScheduler
    inputs: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    context: Callable[[torch.Tensor], dict[str, Any]]  # batch positions -> forward kwargs
    generator: Callable[[], Any]
    save: Callable[[Path], Path]
    conditional: bool  # the PU risk is computed per condition

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


# Written beside every pixel pipeline this package saves: what it was trained on, for --init-from's check.
MODEL_INFO = "pudm_model.json"


def resolve_init_from(init_from: str | Path, split: BuiltSplit) -> Path:
    """The pipeline folder a warm start loads: ``init_from`` itself (a ``DDPMPipeline`` folder, with ``unet/``) or
    its ``pipeline/`` (a train run directory, or a sweep/benchmark trial's ``final/`` checkpoint).

    Refused in one line when it was trained on another split (the ``pudm_model.json`` this package writes beside
    every pipeline names the split and its fingerprint) or another geometry (checked for any pipeline).
    """
    path = Path(init_from).expanduser()
    pipeline = path / "pipeline" if (path / "pipeline" / "unet").is_dir() else path
    if not (pipeline / "unet").is_dir():
        raise ConfigError(f"init_from={str(init_from)!r} holds no trained model (no pipeline/unet or unet folder); "
                          "give a run directory of python -m pudm_bench.train, a trial's final checkpoint or a "
                          "DDPMPipeline folder")
    info_path = pipeline / MODEL_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        spec = split.spec
        if info.get("split") != spec.name or info.get("split_fingerprint") != split.fingerprint:
            raise ConfigError(
                f"init_from={str(init_from)!r} was trained on split {info.get('split')!r} (fingerprint "
                f"{info.get('split_fingerprint')}), not on {spec.name!r} (fingerprint {split.fingerprint}); warm-start "
                "from a run of the same split, split seed and data")
        geometry = (info.get("channels"), info.get("image_size"))
        if geometry != (spec.channels, spec.image_size):
            raise ConfigError(f"init_from={str(init_from)!r} takes {geometry[0]}x{geometry[1]}px images but split "
                              f"{spec.name!r} gives {spec.channels}x{spec.image_size}px")
    unet_config = pipeline / "unet" / "config.json"
    if unet_config.is_file():  # any pipeline: geometry before a single weight is read
        unet = json.loads(unet_config.read_text())
        if (unet.get("in_channels"), unet.get("sample_size")) != (split.spec.channels, split.spec.image_size):
            raise ConfigError(f"init_from={str(init_from)!r} takes {unet.get('in_channels')}x{unet.get('sample_size')}px "
                              f"images but split {split.spec.name!r} gives {split.spec.channels}x"
                              f"{split.spec.image_size}px; warm-start from a model of the same geometry")
    return pipeline.resolve()


def _pixel_denoiser(config: TrainConfig, split: BuiltSplit, data: TrainingSet, device: torch.device) -> Denoiser:
    spec = split.spec
    classes = len(split.conditions) if split.is_conditional else None
    if config.init_from:
        model, noise_scheduler = load_pretrained(str(resolve_init_from(config.init_from, split)), spec.image_size,
                                                 spec.channels, classes)
    elif config.pretrained:
        model, noise_scheduler = load_pretrained(config.pretrained, spec.image_size, spec.channels, classes)
    else:
        model = build_model(config.model_preset or spec.model_preset, spec.image_size, spec.channels, classes)
        noise_scheduler = build_noise_scheduler()
    images, conditions = data.images.to(device), data.conditions.to(device)
    shares = split.unlabeled_normal_condition_shares()

    def save(path: Path) -> Path:
        # DDPMPipeline saves a class-conditional UNet too; its __call__ cannot pass class labels, so sample those
        # with sampling.PixelGenerator (or UNet2DModel.from_pretrained(path / "unet") and class_labels=...).
        DDPMPipeline(unet=model, scheduler=noise_scheduler).save_pretrained(str(path))
        info = {"split": spec.name, "split_fingerprint": split.fingerprint, "image_size": spec.image_size,
                "channels": spec.channels, "conditions": list(split.conditions), "method": config.method,
                "steps": config.steps, "seed": config.seed, "init_from": config.init_from}
        (path / MODEL_INFO).write_text(json.dumps(info, indent=2))
        return path

    return Denoiser(
        model=model, noise_scheduler=noise_scheduler,
        inputs=lambda idx, _generator: to_model_range(images[idx]),
        context=(lambda idx: {"class_labels": conditions[idx]}) if classes else (lambda idx: {}),
        generator=lambda: PixelGenerator(model, noise_scheduler, shares),
        save=save, conditional=classes is not None,
    )


def _latent_denoiser(config: TrainConfig, split: BuiltSplit, data: TrainingSet, device: torch.device,
                     amp_dtype: torch.dtype | None) -> Denoiser:
    from pudm_bench.training import latent

    if split.is_conditional and len(set(split.prompts)) < len(split.prompts):
        raise ConfigError(f"split {split.spec.name!r}: its conditions {', '.join(split.conditions)} need different "
                          "prompts for model=sd (a text-to-image model tells conditions apart only by their text); "
                          "give each condition a prompt")
    components = latent.load_components(config.pretrained)
    latent.check_geometry(components, split.spec.image_size)
    if config.lora_rank is not None:
        latent.add_lora(components.unet, config.lora_rank)
        if amp_dtype is not None:
            # Mixed precision with LoRA: the frozen base weights are stored in the autocast dtype (half the memory,
            # as diffusers' LoRA example does); the adapters the optimizer updates stay float32.
            latent.cast_frozen(components.unet, amp_dtype)
    if config.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
    prompts = split.prompts or ("",)
    # Frozen parts run once: every training image's VAE posterior and every prompt's embedding are cached, so a
    # step runs the UNet alone; the text encoder then leaves the GPU.
    mean, std = latent.encode_images(components, data.images, device, dtype=amp_dtype)
    embeds = latent.encode_prompts(components, prompts, device)
    components.text_encoder.to("cpu")
    prompt_ids = data.prompt_ids.to(device)
    shares = split.prompt_shares()

    def inputs(idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(mean[idx].shape, generator=generator, device=mean.device)
        return mean[idx] + std[idx] * noise

    return Denoiser(
        model=components.unet, noise_scheduler=components.noise_scheduler, inputs=inputs,
        context=lambda idx: {"encoder_hidden_states": embeds[prompt_ids[idx]]},
        generator=lambda: latent.LatentGenerator(components, prompts, shares, config.guidance_scale,
                                                 split.spec.image_size, split.spec.channels, amp_dtype),
        save=lambda path: latent.save_pipeline(components, path, lora=config.lora_rank is not None),
        conditional=split.is_conditional,
    )


def build_denoiser(config: TrainConfig, split: BuiltSplit, data: TrainingSet, device: torch.device,
                   amp_dtype: torch.dtype | None = None) -> Denoiser:
    """The model of ``config.model`` for ``split`` (uses the global torch RNG for a fresh model: seed it first)."""
    if config.model == "sd":
        return _latent_denoiser(config, split, data, device, amp_dtype)
    return _pixel_denoiser(config, split, data, device)


def load_generator(pipeline_dir: Path, config: TrainConfig, split: BuiltSplit, device: torch.device | str) -> Any:
    """An image generator over a model ``save_pipeline`` wrote (``evaluate --run``)."""
    pipeline_dir = Path(pipeline_dir)
    if config.model == "sd":
        from pudm_bench.training import latent

        pipe = latent.load_trained(pipeline_dir, base=config.pretrained)
        # Sampling starts from the training (DDPM) schedule's betas, as after training.
        components = latent.LatentComponents(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                             unet=pipe.unet.to(device),
                                             noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
                                             source=config.pretrained)
        return latent.LatentGenerator(components, split.prompts or ("",), split.prompt_shares(),
                                      config.guidance_scale, split.spec.image_size, split.spec.channels)
    model = UNet2DModel.from_pretrained(str(pipeline_dir / "unet")).to(device).eval()
    noise_scheduler = DDPMScheduler.from_pretrained(str(pipeline_dir / "scheduler"))
    return PixelGenerator(model, noise_scheduler, split.unlabeled_normal_condition_shares())
