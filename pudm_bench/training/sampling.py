"""Batched, seeded sampling through diffusers schedulers (DDIM or DDPM), and image grids."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torchvision.utils import make_grid, save_image

from pudm_bench.errors import ConfigError


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range the diffusion model is trained in."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped)."""
    return images.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)


def make_scheduler(noise_scheduler: DDPMScheduler, sampler: str, steps: int):
    """A DDIM or DDPM sampling scheduler with the training schedule's betas, set to ``steps`` steps."""
    if sampler == "ddim":
        scheduler = DDIMScheduler.from_config(noise_scheduler.config)
    elif sampler == "ddpm":
        scheduler = DDPMScheduler.from_config(noise_scheduler.config)
    else:
        raise ConfigError(f"unknown sampler {sampler!r}; allowed: ddim, ddpm")
    scheduler.set_timesteps(steps)
    return scheduler


def condition_plan(num_images: int, shares: torch.Tensor | None) -> torch.Tensor:
    """The condition of each of ``num_images`` samples: condition c gets round(share_c * n) of them (largest
    remainders, so the counts sum to n), in order 0..0, 1..1, ...; all zeros without conditions."""
    if shares is None:
        return torch.zeros(num_images, dtype=torch.long)
    shares = shares.double() / shares.double().sum()
    exact = shares * num_images
    counts = exact.floor().long()
    remainder = num_images - int(counts.sum())
    if remainder:
        counts[torch.argsort(exact - counts, descending=True, stable=True)[:remainder]] += 1
    return torch.repeat_interleave(torch.arange(len(shares)), counts)


@dataclass(frozen=True)
class Samples:
    """Generated uint8 images (n, C, H, W) and the condition each was drawn for (zeros when unconditional)."""

    images: torch.Tensor
    conditions: torch.Tensor


class PixelGenerator:
    """Samples a pixel-space ``UNet2DModel``; a class-conditional one (``num_class_embeds``) gets each condition in
    proportion to ``condition_shares`` (``condition_plan``)."""

    def __init__(self, model: UNet2DModel, noise_scheduler: DDPMScheduler,
                 condition_shares: torch.Tensor | None = None) -> None:
        self.model = model
        self.noise_scheduler = noise_scheduler
        self.condition_shares = condition_shares

    def __call__(self, num_images: int, *, sampler: str = "ddim", steps: int = 50, batch_size: int = 256,
                 seed: int = 0, device: torch.device | str | None = None) -> Samples:
        conditions = condition_plan(num_images, self.condition_shares)
        images = sample_images(self.model, self.noise_scheduler, num_images=num_images, sampler=sampler, steps=steps,
                               batch_size=batch_size, seed=seed,
                               device=device or next(self.model.parameters()).device,
                               class_labels=conditions if self.condition_shares is not None else None)
        return Samples(images, conditions)


@torch.no_grad()
def sample_images(
    model: UNet2DModel,
    noise_scheduler: DDPMScheduler,
    *,
    num_images: int,
    sampler: str = "ddim",
    steps: int = 50,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``num_images`` samples; returns uint8 (n, C, H, W) on the CPU.

    ``ddim``: deterministic DDIM (eta = 0) with ``steps`` steps (Song et al., 2021). ``ddpm``: ancestral sampling
    over the scheduler's ``steps`` steps (1,000 reproduces the paper's reported samples). Seeded: the same seed and
    batch size give the same images.
    """
    scheduler = make_scheduler(noise_scheduler, sampler, steps)
    if (class_labels is None) != (getattr(model.config, "num_class_embeds", None) is None):
        raise ConfigError("a class-conditional model needs class_labels to sample, an unconditional one takes none")
    was_training = model.training
    model.eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    size = model.config.sample_size
    shape = (model.config.in_channels, size, size) if isinstance(size, int) else (model.config.in_channels, *size)
    chunks = []
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        # Noise drawn on the CPU generator so results do not depend on the device.
        x = torch.randn((n, *shape), generator=generator).to(device)
        labels = None if class_labels is None else class_labels[start:start + n].to(device)
        for t in scheduler.timesteps:
            eps = model(x, t, class_labels=labels).sample
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        chunks.append(to_uint8(x).cpu())
    model.train(was_training)
    return torch.cat(chunks)


def save_grid(images: torch.Tensor, path: str | Path, min_cell_px: int = 32) -> Path:
    """Save uint8 images as one PNG grid; tiny images (8x8 digits) are upscaled (nearest) to stay visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = images.float() / 255.0
    scale = max(1, math.ceil(min_cell_px / x.shape[-1]))
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    nrow = max(1, int(math.ceil(math.sqrt(x.shape[0]))))
    save_image(make_grid(x, nrow=nrow, padding=2, pad_value=1.0), path)
    return path
