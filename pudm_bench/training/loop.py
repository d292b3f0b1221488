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

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DDPMPipeline, DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from pudm_bench.data.build import BuiltSplit, without_unlabeled
from pudm_bench.errors import ConfigError, NonFiniteLossError
from pudm_bench.training.batches import TrainingSet, autocast_dtype, batch_indices, dist_info, select_device
from pudm_bench.training.checkpoint import latest_checkpoint, load_checkpoint, read_checkpoint_state, save_checkpoint
from pudm_bench.training.config import TrainConfig
from pudm_bench.training.denoiser import Denoiser, build_denoiser
from pudm_bench.training.distributed import global_sum
from pudm_bench.training.losses import denoising_error, training_risk
from pudm_bench.training.sampling import PixelGenerator

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

    def on_probe(self, step: int, generator: Any) -> None:
        """At each of ``train(..., probe_steps)`` before the last step: ``generator`` samples the model as it is
        now (its EMA weights when EMA is on), e.g. to score it at a rung of successive halving. Training goes on
        afterwards exactly as without the probe (weights, RNG streams and train mode are restored)."""


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
        rank, world_size = dist_info()
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
    probe_steps: Sequence[int] = (),
) -> TrainResult:
    """Train ``config.method`` on ``split`` for ``config.steps`` steps; checkpoints in ``run_dir/checkpoints``.

    ``prepare_model`` wraps the model for data-parallel training (e.g. ``ray.train.torch.prepare_model``); when
    torch.distributed is initialised each rank takes every world_size-th example of the global batch (with the
    global batch's noise and timesteps), the risk is the global batch's (its statistics summed over ranks before
    the correction), and only rank 0 writes checkpoints. With ``resume`` the latest checkpoint in ``run_dir`` is
    restored exactly (weights, optimizer, schedule, EMA, noise RNG), so N steps in one go and N/2 + N/2 with a
    restart give the same weights on a CPU. At each of ``probe_steps`` (before the last) the callbacks'
    ``on_probe`` get a generator of the model as it is then.
    """
    run_dir = Path(run_dir).resolve()
    rank, world_size = dist_info()
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
    num_conditions = int(data.conditions.max()) + 1 if len(data) else 1  # the same on every rank: statistics' rows

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
    # The same stream on every rank: each draws the global batch's noise and keeps its shard (the step below).
    generator = torch.Generator(device=device).manual_seed(config.seed * 7919 + 17)
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
        # Every rank draws the global batch's inputs, noise and timesteps from the same generator and keeps its
        # shard (every world_size-th example): W workers then see exactly the examples, noise and t that one worker
        # with the same global batch would (for W = 1 this is the plain draw).
        idx = batch_indices(len(data), config.batch_size, config.seed, step - 1).to(device)
        x0 = denoiser.inputs(idx, generator)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = torch.randint(0, timesteps, (x0.shape[0],), generator=generator, device=device)
        if world_size > 1:
            idx, x0, noise, t = idx[rank::world_size], x0[rank::world_size], noise[rank::world_size], t[rank::world_size]
        role, condition = roles[idx], conditions[idx]
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # = noise_scheduler.add_noise, without its per-call copy
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            eps_pred = wrapped(x_t, t, **denoiser.context(idx)).sample
        error = denoising_error(eps_pred, noise)
        # The risk of the global batch: the ranks' statistics are summed before the correction (distributed.py).
        risk = training_risk(risk_method, error, role, beta=beta, correction=config.correction,
                             eta=config.effective_eta, paper_weighting=config.paper_weighting,
                             condition=condition if denoiser.conditional else None, num_conditions=num_conditions,
                             reduce=global_sum if world_size > 1 else None)
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
        if step in probe_steps and not is_last:
            with _probing(model, ema, params, device):
                for callback in callbacks:
                    callback.on_probe(step, denoiser.generator())

    train_seconds = time.perf_counter() - start_time
    if ema is not None:
        ema.copy_to(params)
    model.eval()
    prior_metrics = {k: float(v) for k, v in prior_info.items() if isinstance(v, (int, float))}
    return TrainResult(model=model, noise_scheduler=noise_scheduler, step=step, resumed_from=start_step,
                       metrics=metrics, train_seconds=train_seconds, prior_metrics=prior_metrics, denoiser=denoiser)


@contextmanager
def _probing(model: torch.nn.Module, ema: EMAModel | None, params: Sequence[torch.nn.Parameter],
             device: torch.device):
    """The model in eval mode with its EMA weights, and every RNG stream forked: the training after a probe is the
    training without one (the sampler draws from its own seeded generator, but a module may draw from torch's)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        model.eval()
        try:
            yield
        finally:
            model.train()
            if ema is not None:
                ema.restore(params)


def save_pipeline(result: TrainResult, run_dir: Path) -> Path:
    """The trained model for diffusers, in ``run_dir / "pipeline"``: ``DDPMPipeline.from_pretrained`` (unet), a
    ``StableDiffusionPipeline`` (sd), or LoRA adapters for ``load_lora_weights`` on the base model (sd + LoRA)."""
    path = Path(run_dir) / "pipeline"
    if result.denoiser is not None:
        return result.denoiser.save(path)
    DDPMPipeline(unet=result.model, scheduler=result.noise_scheduler).save_pretrained(str(path))
    return path

