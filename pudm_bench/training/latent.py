"""Latent text-to-image PU-DM (``--model sd``): Stable Diffusion's UNet fine-tuned with the PU risk.

Components come from a diffusers Stable Diffusion pipeline folder (or hub id): ``AutoencoderKL`` (frozen),
a CLIP text encoder and tokenizer (frozen, transformers) and ``UNet2DConditionModel`` (trained in full, or through
LoRA adapters with peft). The step is the pixel model's with the image replaced by its VAE latent and the class by
the prompt (Rombach et al., 2022; paper Sec. 5, Stable Diffusion fine-tuning):
    z0 = vae_scale * (mu(x) + sigma(x) * n),  n ~ N(0, I)     (posterior sample, encoded once before training)
    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    l   = ||eps - eps_theta(z_t, t, text(prompt))||^2 summed over the latent     (losses.denoising_error)
and the PU risk applies per prompt (``losses.conditional_pu_risk``): U_c and S_c are the images with prompt c.

transformers and peft are an optional extra (``pip install 'pudm_bench[sd]'``); this module imports them only when
a latent model is built, so the rest of the package runs without them. ``tiny_pipeline`` writes a randomly
initialised, few-thousand-parameter pipeline from small configs: what the tests and smoke sweeps train, with no
download (``python -m pudm_bench.latent tiny DIR``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from pudm_bench.errors import ConfigError

EXTRA_HINT = "install the extra: pip install 'pudm_bench[sd]' (transformers and peft)"
# The attention projections of UNet2DConditionModel: where LoRA adapters go (Hu et al., 2022; the choice of
# diffusers' text-to-image LoRA example).
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
LORA_DIR = "lora"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def require_extra() -> None:
    """A one-line error naming the extra when transformers or peft is missing."""
    missing = []
    for module in ("transformers", "peft"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"--model sd needs {' and '.join(missing)}; {EXTRA_HINT}")


@dataclass
class LatentComponents:
    """A Stable Diffusion pipeline's parts; only ``unet`` is trained."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    noise_scheduler: Any
    source: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))


def load_components(name_or_path: str) -> LatentComponents:
    """Load vae/, text_encoder/, tokenizer/, unet/ and scheduler/ of a Stable Diffusion pipeline (a folder written by
    ``StableDiffusionPipeline.save_pretrained``, or a hub id on a machine that can download)."""
    require_extra()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(name_or_path).expanduser()
    if not path.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise ConfigError(f"Stable Diffusion pipeline directory {path} does not exist; give a folder written by "
                          "StableDiffusionPipeline.save_pretrained (or python -m pudm_bench.latent tiny DIR) or a hub id")
    source = str(path) if path.exists() else name_or_path
    try:
        components = LatentComponents(
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet"),
            # Training uses DDPM's forward process whatever sampler the pipeline shipped with (SD ships PNDM).
            noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler"),
            source=source,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load Stable Diffusion pipeline {name_or_path!r} ({type(exc).__name__}); give a "
                          "folder with vae/, text_encoder/, tokenizer/, unet/ and scheduler/, or a hub id on a "
                          "machine that can download") from None
    components.vae.requires_grad_(False).eval()
    components.text_encoder.requires_grad_(False).eval()
    return components


def _check_sizes(source: str, image_size: int, vae_levels: int, unet_levels: int) -> int:
    factor = 2 ** (vae_levels - 1)
    need = factor * 2 ** (unet_levels - 1)
    if image_size % need != 0:
        raise ConfigError(f"image_size={image_size} does not fit pipeline {source!r}: it must be divisible by {need} "
                          f"(VAE factor {factor} x {2 ** (unet_levels - 1)} UNet downsamplings); change the split's "
                          "image_size")
    return image_size // factor


def check_geometry(components: LatentComponents, image_size: int) -> int:
    """The latent size for ``image_size``; an error when the VAE and UNet cannot take it."""
    return _check_sizes(components.source, image_size, len(components.vae.config.block_out_channels),
                        len(components.unet.config.block_out_channels))


def check_pipeline(name_or_path: str, image_size: int) -> None:
    """What a sweep checks before Ray starts: the extra is installed, the pipeline's configs load (no weights) and
    its VAE and UNet take the split's image size."""
    require_extra()
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        vae = AutoencoderKL.load_config(name_or_path, subfolder="vae")
        unet = UNet2DConditionModel.load_config(name_or_path, subfolder="unet")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not read Stable Diffusion pipeline {name_or_path!r} ({type(exc).__name__}); give a "
                          "folder with vae/, text_encoder/, tokenizer/, unet/ and scheduler/, or a hub id on a "
                          "machine that can download") from None
    _check_sizes(name_or_path, image_size, len(vae["block_out_channels"]), len(unet["block_out_channels"]))


def add_lora(unet: Any, rank: int) -> None:
    """Freeze the UNet and add trainable LoRA adapters of ``rank`` to its attention projections (peft)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGETS)))


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the frozen parameters in ``dtype``; trainable ones stay float32 (an optimizer updating half-precision
    weights loses small steps)."""
    for param in module.parameters():
        param.data = param.data.float() if param.requires_grad else param.data.to(dtype)


@torch.no_grad()
def encode_prompts(components: LatentComponents, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """CLIP text embeddings (P, L, D) of each prompt, padded to the tokenizer's maximum length as SD does."""
    tokens = components.tokenizer(list(prompts), padding="max_length", truncation=True,
                                  max_length=components.tokenizer.model_max_length, return_tensors="pt")
    encoder = components.text_encoder.to(device)
    return encoder(tokens.input_ids.to(device))[0].float()


@torch.no_grad()
def encode_images(components: LatentComponents, images: torch.Tensor, device: torch.device,
                  batch_size: int = 32, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled VAE posterior (mean, std) of every uint8 image, RGB in [-1, 1]; encoded once, since the VAE is
    frozen and the training images are not augmented."""
    from pudm_bench.training.sampling import to_model_range

    vae = components.vae.to(device)
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start:start + batch_size].to(device))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey images: the VAE takes RGB
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            dist = vae.encode(x).latent_dist
        means.append(dist.mean.float() * components.scaling_factor)
        stds.append(dist.std.float() * components.scaling_factor)
    return torch.cat(means), torch.cat(stds)


class LatentGenerator:
    """Samples a (fine-tuned) latent model: DDIM or DDPM in latent space with classifier-free guidance, decoded by
    the VAE and converted to the split's channels and size (``sampling.PixelGenerator``'s interface)."""

    # Images per UNet call, whatever batch the evaluation asks for (500 by default, sized for small pixel models):
    # a 512 px SD batch of 500 with guidance would need far more memory than any GPU has.
    max_batch = 16

    def __init__(self, components: LatentComponents, prompts: Sequence[str], condition_shares: torch.Tensor | None,
                 guidance_scale: float, image_size: int, channels: int, amp_dtype: torch.dtype | None = None) -> None:
        self.components = components
        self.amp_dtype = amp_dtype  # the training autocast dtype: UNet forwards run under it, as in training
        self.prompts = tuple(prompts)
        self.condition_shares = condition_shares
        self.guidance_scale = guidance_scale
        self.image_size = image_size
        self.channels = channels

    @property
    def model(self) -> Any:
        return self.components.unet

    @torch.no_grad()
    def __call__(self, num_images: int, *, sampler: str = "ddim", steps: int = 50, batch_size: int = 64,
                 seed: int = 0, device: torch.device | str | None = None):
        from pudm_bench.data.build import convert_images
        from pudm_bench.training.sampling import Samples, condition_plan, make_scheduler, to_uint8

        c = self.components
        device = torch.device(device) if device is not None else next(c.unet.parameters()).device
        unet, vae = c.unet.to(device).eval(), c.vae.to(device)
        conditions = condition_plan(num_images, self.condition_shares)
        embeds = encode_prompts(c, self.prompts, device)
        guided = self.guidance_scale != 1.0
        uncond = encode_prompts(c, [""], device) if guided else None
        latent_size = self.image_size // c.vae_scale_factor
        shape = (unet.config.in_channels, latent_size, latent_size)
        scheduler = make_scheduler(c.noise_scheduler, sampler, steps)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        batch_size = min(batch_size, self.max_batch)
        chunks = []
        for start in range(0, num_images, batch_size):
            cond = conditions[start:start + batch_size]
            n = len(cond)
            z = (torch.randn((n, *shape), generator=generator) * scheduler.init_noise_sigma).to(device)
            text = embeds[cond.to(device)]
            if guided:
                text = torch.cat([uncond.expand(n, -1, -1), text])
            for t in scheduler.timesteps:
                z_in = scheduler.scale_model_input(torch.cat([z, z]) if guided else z, t)
                with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    eps = unet(z_in, t, encoder_hidden_states=text).sample.float()
                if guided:
                    eps_uncond, eps_text = eps.chunk(2)
                    eps = eps_uncond + self.guidance_scale * (eps_text - eps_uncond)
                z = scheduler.step(eps, t, z, generator=generator).prev_sample
            images = to_uint8(vae.decode(z / c.scaling_factor).sample.float()).cpu()
            chunks.append(convert_images(images, self.image_size, self.channels))
        return Samples(torch.cat(chunks), conditions)


def save_pipeline(components: LatentComponents, path: str | Path, lora: bool) -> Path:
    """The trained model, loadable with diffusers alone.

    Full fine-tuning: a complete pipeline, ``StableDiffusionPipeline.from_pretrained(path)``. LoRA: only the
    adapters, ``pipe = StableDiffusionPipeline.from_pretrained(<base>); pipe.load_lora_weights(path / "lora")``,
    with the base model's name in ``lora/base_model.json`` (a few MB instead of a 4 GB copy of Stable Diffusion).
    """
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        target = path / LORA_DIR
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(components.unet))
        StableDiffusionPipeline.save_lora_weights(str(target), unet_lora_layers=layers, safe_serialization=True)
        (target / "base_model.json").write_text(json.dumps({"base_model": components.source}, indent=2))
        return target
    pipe = StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, unet=components.unet,
                                   scheduler=components.noise_scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return path


def load_trained(path: str | Path, base: str | None = None):
    """A pipeline written by ``save_pipeline`` (full, or LoRA adapters on their base model) as a
    ``StableDiffusionPipeline``."""
    require_extra()
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    lora_dir = path / LORA_DIR
    if lora_dir.is_dir():
        base = base or json.loads((lora_dir / "base_model.json").read_text())["base_model"]
        pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
        pipe.load_lora_weights(str(lora_dir))
        return pipe
    return StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)


# ---------------------------------------------------------------------------------------------------- tiny model


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE tokenizers (GPT-2, CLIP) use for bytes (Radford et al., 2019)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def tiny_pipeline(path: str | Path, *, seed: int = 0, max_length: int = 16) -> Path:
    """Write a randomly initialised Stable Diffusion pipeline small enough to train on a CPU in seconds.

    Same classes as Stable Diffusion 1.x (AutoencoderKL with a factor-2 latent, UNet2DConditionModel with
    cross-attention, CLIPTextModel, CLIPTokenizer, scaled-linear DDPM schedule) from small configs; the tokenizer is
    character-level (a byte vocabulary without merges), so nothing is downloaded. Takes images whose size is a
    multiple of 4.
    """
    require_extra()
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    tokenizer_files = path / "_tokenizer_src"
    tokenizer_files.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tokenizer_files / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_files / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tokenizer_files / "vocab.json"), str(tokenizer_files / "merges.txt"),
                              model_max_length=max_length)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=max_length, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                        norm_num_groups=8)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(str(path))
    for leftover in tokenizer_files.iterdir():
        leftover.unlink()
    tokenizer_files.rmdir()
    return path
