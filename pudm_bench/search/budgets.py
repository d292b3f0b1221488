"""Training and evaluation budgets: how long a sweep trial trains and how many samples score it.

- ``smoke``: seconds per trial; for tests and for checking a set-up end to end. Scores mean little.
- ``cpu``: the default digits sweep on 2 CPU cores in minutes; 16 px splits (real MNIST: ``mnist_even_16``) a
  schedule measured to draw recognisable digits on one core in about 13 minutes (docs/results.md); on larger
  splits a CPU-sized model ("small" preset) for a short run whose scores mean little.
- ``auto`` (the sweep's default): ``cpu`` on a cluster without GPUs, ``paper`` on one with GPUs
  (``orchestration.placement.budget_for_cluster``), announced with an estimate of its GPU-hours (``describe``).
- ``paper``: the paper's from-scratch schedule (arXiv:2503.03789; facts in docs/concepts.md): AdamW lr 1e-4,
  500 warm-up steps, cosine, clip 1.0, mixed precision on GPUs (bf16, or fp16 where bf16 is missing), 100 epochs (CelebA 20) at batch 128 (MNIST, CIFAR10),
  32 (STL10) or 16 (CelebA); the paper's UNet (the split's ``model_preset``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

from pudm_bench.data.splits import SplitSpec
from pudm_bench.errors import unknown_name
from pudm_bench.scoring.evaluate import EvalConfig
from pudm_bench.search.pareto import DEFAULT_CONSTRAINTS, METRIC_DIRECTIONS, parse_constraint

BUDGETS = ("smoke", "cpu", "paper")
BUDGET_CHOICES = BUDGETS + ("auto",)  # what --budget takes; auto is resolved to one of BUDGETS before any work
# The GPU throughput behind the GPU-hours estimate printed before a GPU run: an assumption, not a measurement (about
# 5% of an H100's dense bf16 peak, a rate small-image UNets at the paper's batch sizes can sustain). The real rate
# of a machine: benchmarks/gpu/check.py.
ASSUMED_GPU_TFLOPS = 50.0
PAPER_BATCH = {"mnist": 128, "cifar10": 128, "stl10": 32, "celeba": 16}
PAPER_EPOCHS = {"celeba": 20}


@dataclass(frozen=True)
class Budget:
    name: str
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    log_every: int
    checkpoint_every: int
    num_samples: int
    sampler: str
    sample_steps: int
    model_preset: str | None = None  # None: the split's own preset
    referee_epochs: int | None = None  # None: the referee's default for the split (see referee.py)
    prior_steps: int = 300  # steps of each U-vs-S classifier for beta auto and the filter (prior.py)
    # Normal-class coverage and precision/recall (evaluate.EvalConfig.diversity): "auto" or "off".
    diversity: str = "auto"
    ema_decay: float | None = None  # EMA of the weights, sampled instead of the last ones


def training_set_size(split: SplitSpec) -> int:
    c = split.counts
    return c.unlabeled_normal + c.unlabeled_sensitive + c.labeled_sensitive


def budget_for(name: str, split: SplitSpec) -> Budget:
    if name not in BUDGETS:
        raise unknown_name("budget", name, BUDGETS)
    digits = split.dataset == "digits"
    if split.dataset == "pufolder":
        return _folder_budget(name, split)
    if name == "smoke":
        # Seconds on a CPU even at 96 px: tiny batches of the "tiny" UNet (no attention) and 24 samples (DDIM-5 at
        # 96 px: 0.2 s each on one thread) away from digits. No
        # coverage away from digits: its per-class referee (a ResNet-18 above 32 px) would cost as much again as the
        # binary one, about 50 s on 2 cores for STL10, for scores a smoke run does not read.
        return Budget(name, steps=20, batch_size=32 if digits else 8, lr=1e-3, warmup_steps=5, log_every=10,
                      checkpoint_every=10,
                      num_samples=48 if digits else 24, sampler="ddim", sample_steps=5,
                      model_preset=None if digits else "tiny", referee_epochs=None if digits else 3, prior_steps=30,
                      diversity="auto" if digits else "off")
    if name == "cpu":
        if digits:
            # Sized so that the default sweep (6 searched trials + 2 baselines, 2 at a time, one CPU thread each:
            # ~0.24 s per step) finishes in under 15 minutes on 2 cores; see docs/quickstart.md for the measurement.
            return Budget(name, steps=600, batch_size=64, lr=1e-3, warmup_steps=50, log_every=50,
                          checkpoint_every=200, num_samples=300, sampler="ddim", sample_steps=25)
        if split.image_size <= 16:
            # Measured on real MNIST at 16 px (docs/results.md, "Learning real MNIST on a CPU"): 3,000 steps of the
            # "small" UNet at batch 64 with EMA 0.999 give recognisable digits of every normal class (recall 0.8 in
            # the per-class referee's features), ~250 ms a step on one thread; 1,500 steps without EMA drew blobs.
            # DDIM-25 scored better than DDIM-10, -50 and -100 on two such models, at half DDIM-50's cost.
            return Budget(name, steps=3000, batch_size=64, lr=1e-3, warmup_steps=100, log_every=100,
                          checkpoint_every=500, num_samples=500, sampler="ddim", sample_steps=25, model_preset="small",
                          ema_decay=0.999)
        return Budget(name, steps=300, batch_size=32, lr=5e-4, warmup_steps=30, log_every=50, checkpoint_every=100,
                      num_samples=200, sampler="ddim", sample_steps=25, model_preset="small")
    batch = PAPER_BATCH.get(split.dataset, 64)
    epochs = PAPER_EPOCHS.get(split.dataset, 100)
    steps = epochs * math.ceil(training_set_size(split) / batch)
    # Evaluation: 5,000 DDIM-100 samples per trial (the paper showed DDPM-1000 samples; --sampler ddpm
    # --sample-steps 1000 reproduces that at 10x the cost).
    return Budget(name, steps=steps, batch_size=batch, lr=1e-4, warmup_steps=500, log_every=100,
                  checkpoint_every=max(500, steps // 20), num_samples=5000, sampler="ddim", sample_steps=100)


def _folder_budget(name: str, split: SplitSpec) -> Budget:
    """Budgets for PU folders, the text-to-image fine-tuning case (``--model sd``; tens to hundreds of images).

    Not the paper's numbers, which it does not report beyond the data (U = 64 + 16, S = 20), SD 1.4 and the abs
    correction: ``paper`` is diffusers' text-to-image fine-tuning recipe (lr 1e-5, batch 8) run for about 80 epochs
    of 100 images; the sweep searches lr around it (search_spaces/sd_lora.yaml for LoRA). docs/large-models.md.
    """
    n = training_set_size(split)
    if name == "smoke":
        return Budget(name, steps=20, batch_size=min(8, n), lr=1e-3, warmup_steps=5, log_every=10, checkpoint_every=10,
                      num_samples=16, sampler="ddim", sample_steps=5, referee_epochs=3, prior_steps=30,
                      diversity="off")
    if name == "cpu":
        return Budget(name, steps=200, batch_size=min(8, n), lr=1e-4, warmup_steps=20, log_every=20,
                      checkpoint_every=100, num_samples=64, sampler="ddim", sample_steps=25)
    return Budget(name, steps=1000, batch_size=min(8, n), lr=1e-5, warmup_steps=100, log_every=50,
                  checkpoint_every=250, num_samples=500, sampler="ddim", sample_steps=50)


def budget_train_values(budget: Budget) -> dict:
    """The TrainConfig fields a budget sets (the sweep's and the benchmark's trials start from these)."""
    from pudm_bench.training.config import SampleConfig

    return dict(steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr, warmup_steps=budget.warmup_steps,
                log_every=budget.log_every, checkpoint_every=budget.checkpoint_every,
                model_preset=budget.model_preset, prior_steps=budget.prior_steps, ema_decay=budget.ema_decay,
                sample=SampleConfig(num_images=16, steps=budget.sample_steps, sampler=budget.sampler))


def make_eval_config(budget: Budget, quality: str, seed: int, referee_floor: float, referee_epochs: int | None,
                     cache_dir: Path, inception: bool = False) -> EvalConfig:
    """How a trial is scored: the budget's sample count and sampler, samples seeded from the trial's seed;
    Inception features (FID, and precision/recall in them) only when the search uses them (``inception``, or FID
    as the quality)."""
    return EvalConfig(num_samples=budget.num_samples, sampler=budget.sampler, sample_steps=budget.sample_steps,
                      sample_seed=seed + 1234, quality_metric=quality,
                      fid="on" if quality == "fid" or inception else "off",
                      referee_floor=referee_floor, referee_epochs=referee_epochs or budget.referee_epochs,
                      cache_dir=str(cache_dir), diversity=budget.diversity)


def rung_eval_config(evaluation: EvalConfig, samples: int | None = None) -> EvalConfig:
    """How a trial is scored at a rung of successive halving: the final evaluation's referees, metrics, sampler and
    seed on fewer samples (``samples``; default a third of the final count, at least 16), so every trial at a
    rung is scored alike and cheaply."""
    n = min(evaluation.num_samples, samples or max(16, evaluation.num_samples // 3))
    return replace(evaluation, num_samples=n, pr_neighbours=min(evaluation.pr_neighbours, n - 1))


def default_constraints(split: SplitSpec, budget: Budget) -> tuple[str, ...]:
    """``pareto.DEFAULT_CONSTRAINTS`` that this split and budget can measure: normal-class coverage needs two or more
    normal classes and a budget that scores diversity; realism is scored on every budget."""
    measured = []
    for text in DEFAULT_CONSTRAINTS:
        metric = parse_constraint(text, METRIC_DIRECTIONS).metric
        if metric.startswith("coverage_") and (len(split.normal_classes) < 2 or budget.diversity == "off"):
            continue
        measured.append(text)
    return tuple(measured)


@functools.lru_cache(maxsize=16)
def forward_flops(preset: str, image_size: int, channels: int) -> float:
    """Floating-point operations of one forward pass of a preset UNet on one image (torch's FLOP counter on the meta
    device: no weights are allocated and nothing is computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pudm_bench.training.models import build_model

    with torch.device("meta"):
        model = build_model(preset, image_size, channels)
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, channels, image_size, image_size), torch.zeros(1, dtype=torch.long))
    return float(counter.get_total_flops())


def run_flops(budget: Budget, split: SplitSpec) -> float | None:
    """FLOPs of one run of ``budget`` on ``split``: training (forward + backward ~ 3 forwards per image) and scoring
    (``num_samples`` x ``sample_steps`` forwards); None for latent (Stable Diffusion) splits, whose model is the
    pipeline's."""
    if split.dataset == "pufolder":
        return None
    forward = forward_flops(budget.model_preset or split.model_preset, split.image_size, split.channels)
    return forward * (3 * budget.steps * budget.batch_size + budget.num_samples * budget.sample_steps)


def describe(budget: Budget, split: SplitSpec, runs: int, choice: str, gpus: float) -> str:
    """One line before a run starts: the budget, why, what one run trains and samples, and on GPUs an estimate of
    the GPU-hours of all ``runs`` (``ASSUMED_GPU_TFLOPS``)."""
    preset = budget.model_preset or split.model_preset
    line = (f"budget {budget.name} ({choice}): {budget.steps:,} steps at batch {budget.batch_size} of the {preset!r} "
            f"UNet, then {budget.num_samples:,} samples ({budget.sampler.upper()}-{budget.sample_steps}) per run; "
            f"{runs} run{'s' if runs != 1 else ''}")
    flops = run_flops(budget, split)
    if gpus >= 1 and flops is not None:
        hours = runs * flops / (ASSUMED_GPU_TFLOPS * 1e12) / 3600
        line += (f": {runs * flops:.2g} FLOP, about {hours:.2g} GPU-hours at an assumed {ASSUMED_GPU_TFLOPS:g} "
                 "TFLOP/s per GPU (an estimate, not a measurement: benchmarks/gpu/check.py measures your GPU)")
    return line
