"""The class prior from U and S alone (``--beta auto``), and the filtering baseline (``--method filter``).

Both train the referee's architecture (``referee.SmallCNN`` up to 32 px, a ResNet-18 at 64 px above) on U and S
only: no image of normal data is labeled, so they can run wherever PU-DM can.

Class prior: Best Bin Estimation (BBE; Garg, Wu, Smola, Balakrishnan & Lipton, "Mixture Proportion Estimation
and PU Learning: A Modern Approach", NeurIPS 2021), the deep-network form of the mixture-proportion bound of
Blanchard, Lee & Scott (2010) that TIcE (Bekker & Davis, 2018) also computes. A classifier g is trained to tell S
(label 1) from U (label 0); on held-out images, for a threshold c,
    q_U(c) = share of U with g >= c,   q_S(c) = share of S with g >= c,   and   beta <= q_U(c) / q_S(c)
because U's sensitive part is distributed like S. The bound is tight on a "top bin" that holds sensitive images
only; BBE picks c by minimising the ratio plus its confidence width,
    c* = argmin_c  q_U(c)/q_S(c) + (1 + gamma)/q_S(c) * (sqrt(log(4/delta) / 2 n_U) + sqrt(log(4/delta) / 2 n_S)),
and returns q_U(c*)/q_S(c*) (gamma = 0.01, delta = 0.1 as in the paper). Why BBE rather than Elkan & Noto (2008)
or KM1/KM2 (Ramaswamy et al., 2016): it needs only the *ranking* of held-out scores, not calibrated probabilities
(a CNN trained on a few dozen S images is not calibrated), and no kernel on raw pixels; where normal and
sensitive images overlap it overestimates beta, the direction the PU-DM paper found harmless (beta 0.15-0.2
worked for a true 0.09). Every image is scored out of fold (``folds``-fold cross-fitting) and each fold's scores
are mapped to the share of that fold's held-out U scoring below them, so the folds' models share one scale.
Uncertainty: the standard deviation and the 5-95% interval of the estimate over bootstrap resamples of the
held-out scores (it does not include the classifiers' training noise).

Filtering baseline: an nnPU classifier (``losses.nnpu_classifier_risk``, Kiryo et al., 2017) trained on U vs S
with the prior (given, else estimated as above) scores U; the ceil(prior * |U|) highest-scoring images are
removed and the unsupervised loss trains on the rest.

``python -m pudm_bench.prior --split digits_even --unlabeled-sensitive-share 0.05`` prints the estimate against the
split's true share.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pudm_bench.data.build import BuiltSplit, convert_images
from pudm_bench.data.splits import SplitSpec
from pudm_bench.errors import ConfigError
from pudm_bench.training.losses import LABELED_SENSITIVE, UNLABELED, nnpu_classifier_risk
from pudm_bench.training.nets import FLIP_DATASETS, ResNetReferee, SmallCNN

# beta is kept inside these bounds wherever it is estimated (an estimate of 0 or 1 is a bound, not a usable prior):
# here before a risk uses it, and in the search space's auto ranges.
PRIOR_BOUNDS = (1e-3, 0.999)
BBE_GAMMA = 0.01
BBE_DELTA = 0.1


@dataclass(frozen=True)
class ScorerConfig:
    """How the U-vs-S classifiers are trained: the referee's architecture, class-balanced batches (half S, half U)."""

    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    folds: int = 5
    bootstrap: int = 200

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "bootstrap"):
            if getattr(self, key) < 1:
                raise ConfigError(f"prior estimator {key}={getattr(self, key)} is invalid: expected an integer >= 1")
        if self.folds < 2:
            raise ConfigError(f"prior estimator folds={self.folds} is invalid: expected an integer >= 2")


# What training runs use (train.py reads it at call time; tests set a cheaper one).
DEFAULT_SCORER = ScorerConfig()


@dataclass(frozen=True)
class PriorEstimate:
    """An estimate of beta, its bootstrap spread, and the top bin it came from (the share of S at or above c*)."""

    estimate: float
    std: float
    ci_low: float
    ci_high: float
    top_bin_sensitive_share: float
    unlabeled: int
    labeled_sensitive: int
    seconds: float
    estimator: str = "bbe"

    def metrics(self) -> dict[str, float]:
        """What runs log: ``prior_estimate``, ``prior_std``, ``prior_ci_low``, ``prior_ci_high``."""
        return {"prior_estimate": self.estimate, "prior_std": self.std, "prior_ci_low": self.ci_low,
                "prior_ci_high": self.ci_high}


# ----------------------------------------------------------------------------------------------------------------
# The estimator on scores


def bbe_from_scores(unlabeled_scores: np.ndarray, sensitive_scores: np.ndarray,
                    gamma: float = BBE_GAMMA, delta: float = BBE_DELTA) -> tuple[float, float]:
    """BBE (Garg et al., 2021, Alg. 1) on held-out scores (higher = more sensitive-like).

    Returns (estimate, q_S(c*)): the ratio q_U/q_S at the threshold that minimises it plus its confidence width,
    clipped to [0, 1], and the share of S at or above that threshold.
    """
    u = np.sort(np.asarray(unlabeled_scores, dtype=np.float64))
    s = np.sort(np.asarray(sensitive_scores, dtype=np.float64))
    n_u, n_s = len(u), len(s)
    if n_u == 0 or n_s == 0:
        raise ConfigError("the prior estimator needs unlabeled and labeled sensitive images")
    thresholds = np.unique(s)  # every S score is a candidate top-bin edge
    # Shares at or above each threshold by binary search (the bootstrap calls this hundreds of times).
    q_s = (n_s - np.searchsorted(s, thresholds, side="left")) / n_s
    q_u = (n_u - np.searchsorted(u, thresholds, side="left")) / n_u
    width = math.sqrt(math.log(4 / delta) / (2 * n_u)) + math.sqrt(math.log(4 / delta) / (2 * n_s))
    objective = q_u / q_s + (1 + gamma) * width / q_s
    best = int(np.argmin(objective))
    return float(min(1.0, q_u[best] / q_s[best])), float(q_s[best])


def bootstrap_bbe(unlabeled_scores: np.ndarray, sensitive_scores: np.ndarray, resamples: int,
                  seed: int) -> tuple[float, float, float]:
    """Standard deviation and 5% / 95% quantiles of BBE over bootstrap resamples of both score sets."""
    rng = np.random.default_rng(seed)
    u, s = np.asarray(unlabeled_scores), np.asarray(sensitive_scores)
    values = [bbe_from_scores(rng.choice(u, len(u)), rng.choice(s, len(s)))[0] for _ in range(resamples)]
    return float(np.std(values, ddof=1)) if resamples > 1 else 0.0, float(np.quantile(values, 0.05)), \
        float(np.quantile(values, 0.95))


# ----------------------------------------------------------------------------------------------------------------
# U-vs-S classifiers


def _classifier_input(split: SplitSpec) -> tuple[str, int]:
    """The referee's architecture and input size for this split (see referee.RefereeSpec.binary)."""
    return ("small_cnn", split.image_size) if split.image_size <= 32 else ("resnet18", 64)


def _build_classifier(arch: str, channels: int) -> torch.nn.Module:
    return SmallCNN(channels, 1) if arch == "small_cnn" else ResNetReferee(channels, 1)


def _prepare(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    return convert_images(images, size, channels).float().div(255.0)


def train_scorer(unlabeled: torch.Tensor, sensitive: torch.Tensor, spec: SplitSpec, loss: str, config: ScorerConfig,
                 seed: int, device: torch.device, prior: float | None = None) -> torch.nn.Module:
    """A classifier whose logit is high for sensitive-looking images, trained on uint8 U and S images.

    ``loss``: "pu_vs_u" (S = 1 vs U = 0, logistic, S and U weighted equally: the BBE classifier) or "nnpu"
    (``losses.nnpu_classifier_risk`` with ``prior``: the filter's classifier). Each batch is half S, half U,
    drawn with replacement from a generator seeded by ``seed``.
    """
    arch, size = _classifier_input(spec)
    x_u, x_s = _prepare(unlabeled, size, spec.channels).to(device), _prepare(sensitive, size, spec.channels).to(device)
    torch.manual_seed(seed)
    model = _build_classifier(arch, spec.channels).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    generator = torch.Generator().manual_seed(seed)
    half = max(1, config.batch_size // 2)
    roles = torch.cat([torch.full((half,), LABELED_SENSITIVE), torch.full((half,), UNLABELED)]).to(device)
    flip = spec.dataset in FLIP_DATASETS
    for _ in range(config.steps):
        i_s = torch.randint(len(x_s), (half,), generator=generator).to(device)
        i_u = torch.randint(len(x_u), (half,), generator=generator).to(device)
        x = torch.cat([x_s[i_s], x_u[i_u]])
        if flip:
            mask = (torch.rand(len(x), generator=generator) < 0.5).to(device)
            x[mask] = x[mask].flip(-1)
        logits = model(x).reshape(-1)
        if loss == "pu_vs_u":
            value = F.softplus(-logits[:half]).mean() + F.softplus(logits[half:]).mean()
        elif loss == "nnpu":
            value = nnpu_classifier_risk(logits, roles, float(prior)).loss
        else:
            raise ConfigError(f"unknown scorer loss {loss!r}; allowed: pu_vs_u, nnpu")
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def score(model: torch.nn.Module, images: torch.Tensor, spec: SplitSpec, device: torch.device,
          batch_size: int = 512) -> np.ndarray:
    """The classifier's logit per uint8 image (higher = more sensitive-like)."""
    _, size = _classifier_input(spec)
    out = [model(_prepare(images[i:i + batch_size], size, spec.channels).to(device)).reshape(-1).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def _folds(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(part) for part in np.array_split(rng.permutation(n), k)]


def estimate_prior(split: BuiltSplit, seed: int = 0, config: ScorerConfig | None = None,
                   device: str | torch.device = "cpu") -> PriorEstimate:
    """BBE on out-of-fold scores of U-vs-S classifiers (module docstring); reads only U and S of ``split``."""
    config = config or DEFAULT_SCORER
    start = time.perf_counter()
    device = torch.device(device)
    unlabeled, sensitive = split.unlabeled, split.labeled_sensitive
    k = min(config.folds, len(sensitive), len(unlabeled))
    if k < 2:
        raise ConfigError(f"split {split.spec.name!r} has {len(unlabeled)} unlabeled and {len(sensitive)} labeled "
                          "sensitive image(s); the prior estimator needs at least 2 of each (for held-out scores)")
    rng = np.random.default_rng(seed)
    folds_u, folds_s = _folds(len(unlabeled), k, rng), _folds(len(sensitive), k, rng)
    u_scores, s_scores = [], []
    for fold in range(k):
        train_u = np.setdiff1d(np.arange(len(unlabeled)), folds_u[fold])
        train_s = np.setdiff1d(np.arange(len(sensitive)), folds_s[fold])
        model = train_scorer(unlabeled[train_u], sensitive[train_s], split.spec, "pu_vs_u", config,
                             seed * 1009 + fold, device)
        held_u = score(model, unlabeled[folds_u[fold]], split.spec, device)
        held_s = score(model, sensitive[folds_s[fold]], split.spec, device)
        # One scale for every fold: a score becomes the share of this fold's held-out U scoring below it.
        reference = np.sort(held_u)
        u_scores.append(np.searchsorted(reference, held_u, side="right") / len(reference))
        s_scores.append(np.searchsorted(reference, held_s, side="right") / len(reference))
    u_all, s_all = np.concatenate(u_scores), np.concatenate(s_scores)
    value, top_share = bbe_from_scores(u_all, s_all)
    std, low, high = bootstrap_bbe(u_all, s_all, config.bootstrap, seed)
    return PriorEstimate(estimate=value, std=std, ci_low=low, ci_high=high, top_bin_sensitive_share=top_share,
                         unlabeled=len(unlabeled), labeled_sensitive=len(sensitive),
                         seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------
# The filtering baseline


@dataclass(frozen=True)
class FilterResult:
    """Which U images the filter keeps (positions in ``split.unlabeled``) and, for diagnostics, how well it did."""

    removed: tuple[int, ...]
    prior: float
    sensitive_removed_share: float  # ground truth: never used by the filter, only reported
    normal_removed_share: float

    def metrics(self) -> dict[str, float]:
        return {"filter_prior": self.prior, "filter_removed": float(len(self.removed)),
                "filter_sensitive_removed_share": self.sensitive_removed_share,
                "filter_normal_removed_share": self.normal_removed_share}


def filter_unlabeled(split: BuiltSplit, prior: float, seed: int = 0, config: ScorerConfig | None = None,
                     device: str | torch.device = "cpu") -> FilterResult:
    """Train an nnPU classifier on U vs S with ``prior`` and remove the ceil(prior * |U|) top-scoring U images."""
    config = config or DEFAULT_SCORER
    if not 0 < prior < 1:
        raise ConfigError(f"filter prior={prior} is invalid: expected a class prior in (0, 1)")
    device = torch.device(device)
    model = train_scorer(split.unlabeled, split.labeled_sensitive, split.spec, "nnpu", config, seed, device, prior)
    scores = score(model, split.unlabeled, split.spec, device)
    count = min(len(scores) - 1, math.ceil(prior * len(scores)))
    removed = np.sort(np.argsort(-scores, kind="stable")[:count])
    truth = split.unlabeled_is_sensitive.numpy()
    removed_mask = np.zeros(len(truth), bool)
    removed_mask[removed] = True
    if not split.truth_known:  # a PU folder without ground truth: what was removed cannot be told apart
        return FilterResult(removed=tuple(int(i) for i in removed), prior=float(prior),
                            sensitive_removed_share=float("nan"), normal_removed_share=float("nan"))
    return FilterResult(
        removed=tuple(int(i) for i in removed), prior=float(prior),
        sensitive_removed_share=float(removed_mask[truth].mean()) if truth.any() else 0.0,
        normal_removed_share=float(removed_mask[~truth].mean()) if (~truth).any() else 0.0,
    )


def prior_step(config, split: BuiltSplit, device: torch.device | str) -> dict[str, Any]:
    """What ``train(..., prior_step=...)`` runs once before training, for ``beta: auto`` and the filter baseline:
    estimate beta (``estimate_prior``; clamped into ``PRIOR_BOUNDS``, as an estimate of 0 or 1 is a bound, not a
    usable prior) and/or filter U (``filter_unlabeled``), seeded by the training seed. Returns what is logged and
    saved with every checkpoint, so a resumed run reuses it (``config``: a ``TrainConfig``)."""
    scorer = dataclasses.replace(DEFAULT_SCORER, steps=config.prior_steps)
    info: dict[str, Any] = {"prior_true": float(split.spec.counts.true_prior)}  # diagnostics only
    prior = config.beta
    if config.estimates_prior:
        estimate = estimate_prior(split, seed=config.seed, config=scorer, device=device)
        info.update(estimate.metrics(), prior_seconds=estimate.seconds)
        prior = min(max(estimate.estimate, PRIOR_BOUNDS[0]), PRIOR_BOUNDS[1])
    info["beta_used"] = float(prior)
    if config.method == "filter":
        result = filter_unlabeled(split, prior, seed=config.seed, config=scorer, device=device)
        info.update(result.metrics(), filter_removed_positions=list(result.removed))
    return info


# ----------------------------------------------------------------------------------------------------------------
# CLI
