"""Typed, frozen run configuration, validated when it is built.

Every invalid value raises ``ConfigError`` naming the key, the value and what is allowed, before any data is read
or any training starts. ``TrainConfig.from_dict`` is how saved configs (``config.json`` in a run directory) and
YAML are loaded: unknown keys are refused with a suggestion, never ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from pudm_bench.errors import ConfigError, check_keys
from pudm_bench.training.losses import CORRECTIONS, METHODS, METHODS_WITH_PRIOR, check_prior

# The diffusion methods of losses.py plus the filtering baseline: an nnPU classifier drops the sensitive-looking
# images from U, then the unsupervised loss trains on the rest (prior.py; docs/concepts.md).
TRAIN_METHODS = (*METHODS, "filter")
# beta: "auto" estimates the class prior from U and S before training (prior.estimate_prior).
AUTO = "auto"
SAMPLERS = ("ddim", "ddpm")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
# unet: a pixel-space UNet2DModel (class-conditional on conditional splits); sd: a Stable Diffusion pipeline's
# UNet2DConditionModel fine-tuned in latent space with text prompts (pudm_bench.latent; the [sd] extra).
MODELS = ("unet", "sd")


def _require(cond: bool, key: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, value, f"one of {', '.join(allowed)}")


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, key, value,
             f"an integer >= {minimum}")


@dataclass(frozen=True)
class SampleConfig:
    """How to sample a trained model: ``sampler`` ddim (``steps`` configurable) or ddpm (the full chain)."""

    sampler: str = "ddim"
    steps: int = 50
    num_images: int = 64
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("sample.sampler", self.sampler, SAMPLERS)
        _positive_int("sample.steps", self.steps)
        _positive_int("sample.num_images", self.num_images)
        _positive_int("sample.batch_size", self.batch_size)
        _positive_int("sample.seed", self.seed, minimum=0)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: which split, which method, and how to optimise.

    Defaults suit the tiny digits preset on a CPU; the paper's schedule (AdamW 1e-4, 500 warm-up steps, cosine,
    clip 1.0, fp16) is what ``budget`` presets of the sweep select for the paper's datasets.
    """

    split: str = "digits_even"
    method: str = "unsupervised"
    beta: float | str | None = None  # a number in (0, 1), "auto" (estimated), or None for the baselines
    correction: str = "abs"
    eta: float | None = None
    paper_weighting: bool = True
    seed: int = 0
    split_seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-2
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float | None = None
    precision: str = "auto"
    device: str = "auto"
    model_preset: str | None = None
    pretrained: str | None = None
    # Warm start: the final model of another run of the same split (its run directory, a trial's final checkpoint
    # or a pipeline folder); fresh optimizer and schedule, this run's own steps (train.resolve_init_from).
    init_from: str | None = None
    model: str = "unet"
    # sd only: LoRA adapters of this rank instead of training the whole UNet; classifier-free guidance when sampling;
    # activation checkpointing in the UNet (less memory, ~30% slower steps).
    lora_rank: int | None = None
    guidance_scale: float = 1.0
    gradient_checkpointing: bool = False
    log_every: int = 50
    checkpoint_every: int = 500
    data_dir: str | None = None
    download: bool = False
    splits_dirs: tuple[str, ...] = ()
    # Optimizer steps of each U-vs-S classifier when beta is estimated (beta auto) or U filtered (prior.py).
    prior_steps: int = 300
    # A split option: set U's sensitive share (unlabeled_normal is kept, unlabeled_sensitive recomputed).
    unlabeled_sensitive_share: float | None = None
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        _choice("method", self.method, TRAIN_METHODS)
        if self.beta == AUTO:
            if self.method not in (*METHODS_WITH_PRIOR, "filter"):
                raise ConfigError(f"method {self.method!r} does not use beta (got beta=auto); drop --beta or use "
                                  "--method pu")
        elif self.method == "filter":
            if self.beta is not None:
                _require(isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool)
                         and 0 < self.beta < 1, "beta", self.beta, "auto or a class prior in (0, 1) (filter's threshold)")
        else:
            if isinstance(self.beta, str):
                raise ConfigError(f"beta={self.beta!r} is invalid: expected a number in (0, 1) or auto")
            check_prior(self.method, self.beta)
        if self.unlabeled_sensitive_share is not None:
            _require(isinstance(self.unlabeled_sensitive_share, (int, float)) and 0 < self.unlabeled_sensitive_share < 1,
                     "unlabeled_sensitive_share", self.unlabeled_sensitive_share, "a share in (0, 1), e.g. 0.05")
        _choice("correction", self.correction, CORRECTIONS)
        if self.method != "pnu" and self.eta is not None:
            raise ConfigError(f"method {self.method!r} does not use eta (got eta={self.eta}); drop --eta or use --method pnu")
        if self.eta is not None:
            _require(self.eta >= 0, "eta", self.eta, "a number >= 0")
        _positive_int("seed", self.seed, minimum=0)
        _positive_int("split_seed", self.split_seed, minimum=0)
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size, minimum=2)
        _require(isinstance(self.lr, (int, float)) and 0 < self.lr < 1, "lr", self.lr, "a number in (0, 1), e.g. 1.0e-4")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _positive_int("warmup_steps", self.warmup_steps, minimum=0)
        _require(self.grad_clip > 0, "grad_clip", self.grad_clip, "a number > 0")
        if self.ema_decay is not None:
            _require(0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "a number in (0, 1), e.g. 0.999")
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        _choice("model", self.model, MODELS)
        if self.init_from is not None:
            if self.pretrained is not None:
                raise ConfigError(f"init_from={self.init_from!r} and pretrained={self.pretrained!r} both give the "
                                  "initial weights; keep one")
            if self.model != "unet":
                raise ConfigError(f"init_from applies to model=unet only (got model={self.model!r}); fine-tune an sd "
                                  "pipeline with --pretrained")
        if self.model == "sd":
            if not self.pretrained:
                raise ConfigError("model=sd needs pretrained: a Stable Diffusion pipeline folder or hub id (e.g. "
                                  "--pretrained CompVis/stable-diffusion-v1-4, or python -m pudm_bench.latent tiny DIR)")
            if self.model_preset is not None:
                raise ConfigError(f"model_preset={self.model_preset!r} applies to model=unet only; model=sd takes its "
                                  "architecture from pretrained")
        else:
            for key, value, default in (("lora_rank", self.lora_rank, None), ("guidance_scale", self.guidance_scale, 1.0),
                                        ("gradient_checkpointing", self.gradient_checkpointing, False)):
                if value != default:
                    raise ConfigError(f"{key}={value!r} applies to model=sd only; add --model sd or drop it")
        if self.lora_rank is not None:
            _positive_int("lora_rank", self.lora_rank)
        _require(isinstance(self.guidance_scale, (int, float)) and self.guidance_scale >= 1, "guidance_scale",
                 self.guidance_scale, "a number >= 1 (1 = no classifier-free guidance; SD commonly uses 7.5)")
        _positive_int("prior_steps", self.prior_steps)
        _positive_int("log_every", self.log_every)
        _positive_int("checkpoint_every", self.checkpoint_every)

    @property
    def estimates_prior(self) -> bool:
        """Whether training starts by estimating the class prior (beta auto, or filter without a given beta)."""
        return self.beta == AUTO or (self.method == "filter" and self.beta is None)

    @property
    def effective_eta(self) -> float:
        return 1.0 if self.eta is None else float(self.eta)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["splits_dirs"] = list(self.splits_dirs)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> "TrainConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(dict(data), names, where)
        data = dict(data)
        if "sample" in data:
            sample = data["sample"]
            check_keys(sample, [f.name for f in dataclasses.fields(SampleConfig)], f"{where}.sample")
            data["sample"] = SampleConfig(**sample)
        if "splits_dirs" in data:
            data["splits_dirs"] = tuple(data["splits_dirs"])
        return cls(**data)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
