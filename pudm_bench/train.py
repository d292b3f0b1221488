"""The training loop for PU-DM and its baselines (``python -m pudm_bench.train``, a single run, is ``cli.train``).

This module imports neither Ray nor MLflow: the sweep drives it through ``train(..., callbacks, prepare_model)``
and records what the callbacks report. Reading order: data -> model and optimiser -> resume -> the step -> save.

One step (Ho et al., 2020, with the per-example error the PU risk needs):
    x0 ~ batch of U (+ S, + N for PNU), eps ~ N(0, I), t ~ U{0..999}
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps        (noise_scheduler.add_noise)
    l   = ||eps - eps_theta(x_t, t)||^2 per example     (losses.denoising_error)
    loss = training_risk(method, l, role)               (losses.py: unsupervised / supervised / pu / pnu)
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from pudm_bench.checkpoint import latest_checkpoint, load_checkpoint, read_checkpoint_state, save_checkpoint
from pudm_bench.config import TrainConfig
from pudm_bench.data.splits import BuiltSplit, without_unlabeled
from pudm_bench.errors import ConfigError, NonFiniteLossError
from pudm_bench.losses import LABELED_NORMAL, LABELED_SENSITIVE, UNLABELED, denoising_error, training_risk
from pudm_bench.models import build_model, build_noise_scheduler, load_pretrained
from pudm_bench.sampling import PixelGenerator, to_model_range

# Config keys that may change between a run and its resumption without making the checkpoint invalid.
RESUMABLE_CHANGES = {"steps", "log_every", "checkpoint_every", "sample", "data_dir", "download", "splits_dirs",
                     "device"}


class Callback:
    """Hooks the loop calls on every rank at the same steps (Ray Train's report is a barrier across workers);
    override what you need (the sweep's reporter, the progress bar)."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Every ``log_every`` steps and at the last step, with this rank's metrics averaged over the interval."""

    def on_checkpoint(self, step: int, path: Path | None) -> None:
        """After a checkpoint is complete on disk (rank 0 writes it; other ranks get ``path=None``)."""


@dataclass
class TrainingSet:
    """Every training image as one uint8 tensor (kept on the training device), each one's role and its condition
    (class or prompt of a conditional model; zeros when unconditional)."""

    images: torch.Tensor
    roles: torch.Tensor
    conditions: torch.Tensor
    prompt_ids: torch.Tensor  # text-to-image models: which of split.prompts each image is trained with

    @classmethod
    def from_split(cls, split: BuiltSplit, method: str) -> "TrainingSet":
        """U and S concatenated (the paper's set-up: batches mix them in proportion); N only for PNU.

        The unsupervised baseline keeps S in the batches with weight 0 (``losses.unsupervised_risk``), which is how
        the paper's experiments ran it; its model never learns from S.
        """
        parts = [(split.unlabeled, UNLABELED, split.unlabeled_conditions, split.unlabeled_prompt_ids),
                 (split.labeled_sensitive, LABELED_SENSITIVE, split.labeled_sensitive_conditions,
                  split.labeled_sensitive_prompt_ids)]
        if method == "pnu":
            if len(split.labeled_normal) == 0:
                raise ConfigError(
                    f"method 'pnu' needs labeled normal data but split {split.spec.name!r} has counts.labeled_normal=0; "
                    "add labeled_normal to the split's counts"
                )
            parts.append((split.labeled_normal, LABELED_NORMAL, split.labeled_normal_conditions, None))

        def column(values: list[torch.Tensor | None]) -> torch.Tensor:
            return torch.cat([torch.zeros(len(p[0]), dtype=torch.long) if v is None else v
                              for p, v in zip(parts, values)])

        images = torch.cat([p[0] for p in parts])
        roles = torch.cat([torch.full((len(p[0]),), p[1], dtype=torch.long) for p in parts])
        conditions = column([p[2] for p in parts])
        prompt_ids = column([p[3] if p[3] is not None else p[2] for p in parts])
        return cls(images, roles, conditions, prompt_ids)

    def __len__(self) -> int:
        return len(self.roles)


@functools.lru_cache(maxsize=2)
def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch: a pure function of (seed, epoch), so resuming needs no data-loader state."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's share of the global batch for ``step`` (0-based): epochs drop their last partial batch."""
    per_epoch = num_examples // batch_size
    epoch, within = divmod(step, per_epoch)
    order = epoch_order(num_examples, seed, epoch)
    global_batch = order[within * batch_size:(within + 1) * batch_size]
    return global_batch[rank::world_size]


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """fp16 autocast on GPUs by default (the paper trained in fp16); full precision on CPUs."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs a CUDA device; use --precision fp32 or bf16 on a CPU")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    old, new = _comparable(saved), _comparable(current)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{checkpoint} was written by a run with a different config ({diffs}); use another --out or --no-resume"
        )


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
    from pudm_bench import latent

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


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained network, unwrapped; holds the EMA weights when EMA is on
    noise_scheduler: DDPMScheduler
    step: int
    resumed_from: int
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    prior_metrics: dict[str, float] = field(default_factory=dict)  # beta auto / filter: the estimate, what was removed
    denoiser: Denoiser | None = None

    @property
    def generator(self) -> Any:
        """Samples the trained model: ``result.generator(64, sampler="ddim", steps=50, seed=0)`` -> Samples."""
        return self.denoiser.generator() if self.denoiser is not None else PixelGenerator(self.model,
                                                                                           self.noise_scheduler)


# What estimates beta (``beta: auto``) and runs the filter baseline: ``prior.prior_step``, passed in by the caller
# (the Train worker, the train command), so that the loop imports no estimator and no referee networks.
PriorStep = Callable[[TrainConfig, BuiltSplit, torch.device], dict[str, Any]]


def resolve_prior(config: TrainConfig, split: BuiltSplit, checkpoint: Path | None, device: torch.device,
                  prior_step: PriorStep | None) -> tuple[float | None, BuiltSplit, dict[str, Any]]:
    """The beta the risk uses and the split it trains on, for ``beta: auto`` and the filter baseline.

    Computed once by ``prior_step``: read back from ``checkpoint`` when resuming, else on rank 0 and broadcast, so
    every rank (and every restart) trains on the same prior and the same filtered U.
    """
    if not config.estimates_prior and config.method != "filter":
        return config.beta, split, {}
    info = read_checkpoint_state(checkpoint)["config"].get("prior") if checkpoint is not None else None
    if info is None:
        if prior_step is None:
            raise ConfigError(f"method {config.method} with beta {config.beta!r} needs the class-prior estimator: "
                              "call train(..., prior_step=pudm_bench.prior.prior_step)")
        rank, world_size = _dist_info()
        info = prior_step(config, split, device) if rank == 0 else None
        if world_size > 1:
            holder = [info]
            torch.distributed.broadcast_object_list(holder, src=0)
            info = holder[0]
    if config.method == "filter":
        split = without_unlabeled(split, info["filter_removed_positions"])
    return info["beta_used"], split, info


def train(
    config: TrainConfig,
    split: BuiltSplit,
    run_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    resume: bool = True,
    prior_step: PriorStep | None = None,
) -> TrainResult:
    """Train ``config.method`` on ``split`` for ``config.steps`` steps; checkpoints in ``run_dir/checkpoints``.

    ``prepare_model`` wraps the model for data-parallel training (e.g. ``ray.train.torch.prepare_model``); when
    torch.distributed is initialised each rank takes every world_size-th example of the global batch and only
    rank 0 writes checkpoints. With ``resume`` the latest checkpoint in ``run_dir`` is
    restored exactly (weights, optimizer, schedule, EMA, noise RNG), so N steps in one go and N/2 + N/2 with a
    restart give the same weights on a CPU.
    """
    run_dir = Path(run_dir).resolve()
    rank, world_size = _dist_info()
    device = select_device(config.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    amp_dtype = autocast_dtype(config.precision, device)
    if config.batch_size % world_size != 0:
        raise ConfigError(f"batch_size={config.batch_size} must be divisible by the {world_size} training workers")

    checkpoint = latest_checkpoint(run_dir) if resume else None
    beta, split, prior_info = resolve_prior(config, split, checkpoint, device, prior_step)
    data = TrainingSet.from_split(split, config.method)
    if len(data) < config.batch_size:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {len(data)} training images of split "
                          f"{split.spec.name!r}; lower --batch-size")
    roles, conditions = data.roles.to(device), data.conditions.to(device)

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    denoiser = build_denoiser(config, split, data, device, amp_dtype)
    model, noise_scheduler = denoiser.model, denoiser.noise_scheduler
    model.to(device).train()
    params = denoiser.trainable_parameters()  # all of the UNet, or its LoRA adapters
    # The fused AdamW kernel (CPU and CUDA): 4-10% faster per bare step than torch's per-parameter loop on CPU
    # (benchmarks/perf/train_step.py, docs/performance.md); same update rule.
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    ema = EMAModel(params, decay=config.ema_decay) if config.ema_decay else None
    generator = torch.Generator(device=device).manual_seed(config.seed * 7919 + 17 + rank)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    saved_config = {**config.to_dict(), "split_fingerprint": split.fingerprint}
    if prior_info:
        saved_config["prior"] = prior_info
    start_step = 0
    if checkpoint is not None:
        _check_resumable(read_checkpoint_state(checkpoint)["config"], saved_config, checkpoint)
        state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                generator=generator, ema=ema)
        start_step = int(state["step"])
        if ema is not None:
            ema.to(device)

    wrapped = prepare_model(model) if prepare_model is not None else model
    timesteps = noise_scheduler.config.num_train_timesteps
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    is_pu = config.method in ("pu", "pnu")
    risk_method = "unsupervised" if config.method == "filter" else config.method  # filter: unsupervised on the rest

    # Interval sums stay on the device; one host sync per log interval instead of one per step.
    totals = torch.zeros(5, device=device)  # loss, R+, R-, [R- < 0], grad norm
    interval_steps = 0
    metrics: dict[str, float] = {}
    start_time = time.perf_counter()
    step = start_step
    for step in range(start_step + 1, config.steps + 1):
        idx = batch_indices(len(data), config.batch_size, config.seed, step - 1, rank, world_size).to(device)
        x0 = denoiser.inputs(idx, generator)
        role, condition = roles[idx], conditions[idx]
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = torch.randint(0, timesteps, (x0.shape[0],), generator=generator, device=device)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # = noise_scheduler.add_noise, without its per-call copy
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            eps_pred = wrapped(x_t, t, **denoiser.context(idx)).sample
        error = denoising_error(eps_pred, noise)
        risk = training_risk(risk_method, error, role, beta=beta, correction=config.correction,
                             eta=config.effective_eta, paper_weighting=config.paper_weighting,
                             condition=condition if denoiser.conditional else None)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(risk.loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        lr_scheduler.step()
        if ema is not None:
            ema.step(params)

        totals += torch.stack([
            risk.loss.detach(),
            risk.positive_risk.detach(),
            risk.negative_risk.detach(),
            (risk.negative_risk.detach() < 0).float(),
            grad_norm.detach().float(),
        ])
        interval_steps += 1
        is_last = step == config.steps
        if step % config.log_every == 0 or step % config.checkpoint_every == 0 or is_last:
            values = (totals / interval_steps).tolist()
            if not math.isfinite(values[0]):
                raise NonFiniteLossError(
                    f"non-finite loss ({values[0]}) between steps {step - interval_steps + 1} and {step} of "
                    f"{config.method} (lr={config.lr}); lower --lr or raise --warmup-steps (no checkpoint written)"
                )
            metrics = {"loss": values[0], "grad_norm": values[4], "lr": lr_scheduler.get_last_lr()[0],
                       "step": float(step), "elapsed_s": time.perf_counter() - start_time}
            if risk_method != "unsupervised":
                metrics["positive_risk"] = values[1]
                metrics["negative_risk"] = values[2]
            if is_pu:
                metrics["negative_risk_below_zero_share"] = values[3]
            totals.zero_()
            interval_steps = 0
            for callback in callbacks:
                callback.on_log(step, dict(metrics))
        if step % config.checkpoint_every == 0 or is_last:
            path = None
            if rank == 0:
                path = save_checkpoint(run_dir, step, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                       generator=generator, ema=ema, config=saved_config)
            for callback in callbacks:
                callback.on_checkpoint(step, path)

    train_seconds = time.perf_counter() - start_time
    if ema is not None:
        ema.copy_to(params)
    model.eval()
    prior_metrics = {k: float(v) for k, v in prior_info.items() if isinstance(v, (int, float))}
    return TrainResult(model=model, noise_scheduler=noise_scheduler, step=step, resumed_from=start_step,
                       metrics=metrics, train_seconds=train_seconds, prior_metrics=prior_metrics, denoiser=denoiser)


def save_pipeline(result: TrainResult, run_dir: Path) -> Path:
    """The trained model for diffusers, in ``run_dir / "pipeline"``: ``DDPMPipeline.from_pretrained`` (unet), a
    ``StableDiffusionPipeline`` (sd), or LoRA adapters for ``load_lora_weights`` on the base model (sd + LoRA)."""
    path = Path(run_dir) / "pipeline"
    if result.denoiser is not None:
        return result.denoiser.save(path)
    DDPMPipeline(unet=result.model, scheduler=result.noise_scheduler).save_pretrained(str(path))
    return path


def load_generator(pipeline_dir: Path, config: TrainConfig, split: BuiltSplit, device: torch.device | str) -> Any:
    """An image generator over a model ``save_pipeline`` wrote (``evaluate --run``)."""
    pipeline_dir = Path(pipeline_dir)
    if config.model == "sd":
        from pudm_bench import latent

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


if __name__ == "__main__":  # python -m pudm_bench.train: the command (cli.train) wires in the prior estimator
    from pudm_bench.cli.train import main

    sys.exit(main())
