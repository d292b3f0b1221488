"""Per-example denoising error and the training risks of PU-DM and its baselines.

Reference: H. Takahashi et al., "Positive-Unlabeled Diffusion Models for Preventing Sensitive Data Generation",
ICLR 2025 (arXiv:2503.03789), Sec. 3-4. Notation follows the paper: U is the unlabeled set (a mixture of normal
and sensitive data with sensitive share beta, the class prior), S the labeled sensitive set, N (PNU only) a
labeled normal set.

As in NVlabs/edm's ``training/loss.py``, ``denoising_error`` returns one value per example; the risk functions
below take those per-example values plus a per-example role (unlabeled / labeled sensitive / labeled normal) and
decide how to average, because PU learning weights the roles differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from pudm_bench.errors import ConfigError

METHODS = ("unsupervised", "supervised", "pu", "pnu")
CORRECTIONS = ("abs", "max")
METHODS_WITH_PRIOR = ("pu", "pnu")

# Roles of the examples in a batch (the ``role`` tensor). Integers so a whole batch's roles are one tensor.
UNLABELED = 0
LABELED_SENSITIVE = 1
LABELED_NORMAL = 2

# s(l) is evaluated at l >= this floor. s(0) is +inf and ds/dl = -1/expm1(l) explodes near 0; an error of 1e-6
# summed over every pixel of an image never happens in practice (a random guess gives ~#pixels), so the floor
# only guards against overflow and never changes a realistic loss.
MIN_ERROR = 1e-6


def denoising_error(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """l(x) = ||eps - eps_theta(x_t, t)||^2 summed over every pixel and channel; shape (batch,).

    Summed, not averaged, as in the paper's experiments: the sensitive loss s(l) = -log(1 - exp(-l)) is not
    scale-invariant, so the scale of l matters.
    """
    return (eps_pred.float() - eps.float()).pow(2).flatten(1).sum(dim=1)


def sensitive_loss(error: torch.Tensor) -> torch.Tensor:
    """s(x) = -log(1 - exp(-l(x))), the bounded loss that pushes the error on sensitive data up.

    The paper (Sec. 4) replaces the unbounded -l(x) for labeled sensitive data by -log(1 - exp(-l)) so that
    minimising the risk cannot run away by making l -> inf. Computed as -log1mexp(l) with the two-branch
    formula of Maechler (2012): log(-expm1(-l)) for l <= log 2, log1p(-exp(-l)) above, which is accurate in both
    float32 and float64; 1 - exp(-l) + eps would be wrong for large l and still unstable near 0. Errors below
    ``MIN_ERROR`` are clamped (s(0) is infinite).
    """
    error = error.clamp_min(MIN_ERROR)
    small = error <= 0.6931471805599453
    # Each branch sees only inputs in its own range so that neither produces inf/NaN in the backward pass.
    small_branch = torch.log(-torch.expm1(-torch.where(small, error, torch.ones_like(error))))
    large_branch = torch.log1p(-torch.exp(-torch.where(small, torch.ones_like(error), error)))
    return -torch.where(small, small_branch, large_branch)


@dataclass(frozen=True)
class Risk:
    """A batch's training objective and its parts (scalars, still attached to the graph).

    ``positive_risk`` (R+) and ``negative_risk`` (R-) are NaN for methods that have no such terms, so the
    training loop can log every method with the same keys.
    """

    loss: torch.Tensor
    positive_risk: torch.Tensor
    negative_risk: torch.Tensor
    labeled_normal_risk: torch.Tensor


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values[mask]) / max(count, 1): the per-batch mean of one role (0 when the batch has none of it)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _nan(like: torch.Tensor) -> torch.Tensor:
    return torch.full((), float("nan"), dtype=like.dtype, device=like.device)


def check_prior(method: str, beta: float | None) -> None:
    """beta must lie in (0, 1) for PU/PNU and must not be given for methods that ignore it."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method in METHODS_WITH_PRIOR:
        if beta is None or not (0.0 < float(beta) < 1.0):
            raise ConfigError(f"beta={beta} is invalid for method {method!r}: the class prior must be in (0, 1), e.g. --beta 0.1")
    elif beta is not None:
        raise ConfigError(f"method {method!r} does not use beta (got beta={beta}); drop --beta or use --method pu")


# ------------------------------------------------------------------------------------ sufficient statistics
# Every risk below is a function of a few sums over the batch, per condition: the count of each role, the sum of l
# over each role, and the sum of s over S. Computing the risks from these sums (instead of per-batch means) lets a
# data-parallel run add the sums of every rank before the correction (``reduce``), so that W workers optimise
# exactly what one worker with the same global batch would (docs/concepts.md, "Data-parallel training").
COUNT_U, COUNT_S, COUNT_N, ERROR_U, ERROR_S, ERROR_N, SENSITIVE_S = range(7)
NUM_STATISTICS = 7


def risk_statistics(error: torch.Tensor, role: torch.Tensor, condition: torch.Tensor | None = None,
                    num_conditions: int = 1) -> torch.Tensor:
    """The batch's sufficient statistics, shape (num_conditions, 7), one row per condition (one row when
    ``condition`` is None); columns COUNT_U, COUNT_S, COUNT_N (examples of each role), ERROR_U, ERROR_S, ERROR_N
    (sum of l over each role) and SENSITIVE_S (sum of s(x) over S). Differentiable in ``error``."""
    dtype = error.dtype
    if condition is None:
        by_condition = torch.ones(len(error), 1, dtype=dtype, device=error.device)
    else:
        by_condition = torch.nn.functional.one_hot(condition, num_conditions).to(dtype)
    roles = torch.nn.functional.one_hot(role, 3).to(dtype)  # UNLABELED, LABELED_SENSITIVE, LABELED_NORMAL
    sensitive = (sensitive_loss(error) * roles[:, LABELED_SENSITIVE]).unsqueeze(1)
    return by_condition.T @ torch.cat([roles, roles * error.unsqueeze(1), sensitive], dim=1)


def _per_role_mean(statistics: torch.Tensor, total: int, count: int) -> torch.Tensor:
    return statistics[..., total] / statistics[..., count].clamp_min(1.0)


def risk_from_statistics(method: str, statistics: torch.Tensor, *, beta: float | None = None,
                         correction: str = "abs", eta: float = 1.0, paper_weighting: bool = True) -> Risk:
    """The training risk of ``method`` from ``risk_statistics`` (summed over ranks in data-parallel training).

    With several rows (conditions), PU and PNU risks are per condition (``conditional_pu_risk``); the baselines'
    losses are sums over examples, so they use the rows' total.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    pooled = statistics.sum(dim=0)
    batch = pooled[COUNT_U] + pooled[COUNT_S] + pooled[COUNT_N]
    nan = _nan(statistics)
    if method == "unsupervised":
        loss = pooled[ERROR_U] / (batch if paper_weighting else pooled[COUNT_U]).clamp_min(1.0)
        return Risk(loss, nan, nan, nan)
    if method == "supervised":
        if paper_weighting:  # the batch mean of (1 - y) l + y s
            positive, negative = pooled[SENSITIVE_S] / batch.clamp_min(1.0), pooled[ERROR_U] / batch.clamp_min(1.0)
        else:
            positive = _per_role_mean(pooled, SENSITIVE_S, COUNT_S)
            negative = _per_role_mean(pooled, ERROR_U, COUNT_U)
        return Risk(negative + positive, positive, negative, nan)
    beta = float(beta) if beta is not None else math.nan
    if not 0.0 < beta < 1.0:
        raise ConfigError(f"beta={beta} is invalid: the class prior must be in (0, 1)")
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; allowed: {', '.join(CORRECTIONS)}")
    if method == "pnu" and eta < 0:
        raise ConfigError(f"eta={eta} is invalid: the labeled-normal weight must be >= 0")
    # One PU risk per row (condition), each corrected on its own; rows weighted by their share of the batch.
    positive = beta * _per_role_mean(statistics, SENSITIVE_S, COUNT_S)
    negative = _per_role_mean(statistics, ERROR_U, COUNT_U) - beta * _per_role_mean(statistics, ERROR_S, COUNT_S)
    if correction == "abs":
        loss = positive + negative.abs()
    else:
        loss = torch.where(negative >= 0, positive + negative, -negative)
    normal = _per_role_mean(statistics, ERROR_N, COUNT_N)
    if method == "pnu":
        loss = loss + eta * normal
    if len(statistics) == 1:  # exactly the unconditional formulas, no weights
        return Risk(loss[0], positive[0], negative[0], normal[0] if method == "pnu" else nan)
    weight = statistics[:, COUNT_U:COUNT_N + 1].sum(dim=1) / batch.clamp_min(1.0)
    return Risk((weight * loss).sum(), (weight * positive).sum(), (weight * negative).sum(),
                (weight * normal).sum() if method == "pnu" else nan)


# ------------------------------------------------------------------------------- the risks, batch by batch


def unsupervised_risk(error: torch.Tensor, role: torch.Tensor, paper_weighting: bool = True) -> Risk:
    """Standard DDPM training on U only: mean_U l(x) (Ho et al., 2020, L_simple with a summed error).

    With ``paper_weighting`` (default) the U examples' error is divided by the whole batch size, i.e. the batch
    mean of (1 - y) * l, as the paper's experiments computed it; otherwise by the number of U examples.
    """
    return training_risk("unsupervised", error, role, paper_weighting=paper_weighting)


def supervised_risk(error: torch.Tensor, role: torch.Tensor, paper_weighting: bool = True) -> Risk:
    """Naive supervised baseline: all of U treated as normal, S as sensitive.

    paper_weighting=True (default): batch mean of (1 - y) * l(x) + y * s(x), so S weighs in by its share of the
    batch, as in the paper's experiments. False: mean_U l(x) + mean_S s(x), S weighted equally with U (this
    variant collapsed to all-sensitive samples on digits in a trial run; see docs/concepts.md).
    """
    return training_risk("supervised", error, role, paper_weighting=paper_weighting)


def pu_risk(error: torch.Tensor, role: torch.Tensor, beta: float, correction: str) -> Risk:
    """The PU-DM objective on one batch (paper Sec. 4; non-negative correction after Kiryo et al., 2017).

    With n_S, n_U the counts of labeled sensitive and unlabeled examples in the batch (each floored at 1):
        R+ = beta * sum_S s(x) / n_S
        R- = sum_U l(x) / n_U - beta * sum_S l(x) / n_S        (estimates (1 - beta) * E_normal[l])
    ``abs`` (absPU):  loss = R+ + |R-|
    ``max`` (nnPU):   loss = R+ + R-  if R- >= 0,  else  -R-
    The ``max`` branch for R- < 0 optimises -R- alone: its gradient pushes the estimated normal risk back up
    (the defining step of non-negative PU learning) instead of following a risk estimate that has gone negative.
    """
    return training_risk("pu", error, role, beta=beta, correction=correction)


def conditional_pu_risk(error: torch.Tensor, role: torch.Tensor, condition: torch.Tensor, beta: float,
                        correction: str, eta: float | None = None) -> Risk:
    """The PU(-N) risk of a conditional model: one risk per condition, weighted by the condition's share of the batch.

    A conditional model learns p(x | c); the paper's conditional extension applies the PU objective to each
    condition's own U_c and S_c (Sec. 4, conditional case), so for the conditions c present in the batch
        loss = sum_c (n_c / n) * loss_c,   loss_c = pu_risk (or pnu_risk) on the examples with condition c,
    each with its own correction (a negative R-_c is corrected even when the batch-wide R- is positive). R+ and R-
    are reported as the same weighted sums. With one condition this is ``pu_risk`` exactly.
    """
    return training_risk("pu" if eta is None else "pnu", error, role, beta=beta, correction=correction,
                         eta=1.0 if eta is None else eta, condition=condition)


def pnu_risk(error: torch.Tensor, role: torch.Tensor, beta: float, correction: str, eta: float) -> Risk:
    """PU risk plus a labeled-normal term (the paper's PNU extension, for when some normal data is labeled).

        loss = PU loss + eta * sum_N l(x) / n_N

    The labeled normal examples (role LABELED_NORMAL) enter only through that term; U and S as in ``pu_risk``.
    """
    return training_risk("pnu", error, role, beta=beta, correction=correction, eta=eta)


def nnpu_classifier_risk(logits: torch.Tensor, role: torch.Tensor, prior: float) -> Risk:
    """Non-negative PU risk of a binary classifier g (Kiryo et al., NeurIPS 2017, eq. 6 and Alg. 1), sigmoid loss.

    With l(z) = sigmoid(-z) the loss of calling an example sensitive with score z, and pi the class prior:
        R+ = pi * mean_S l(g(x))                               (labeled sensitive as sensitive)
        R- = mean_U l(-g(x)) - pi * mean_S l(-g(x))            (estimates (1 - pi) * normal risk)
        loss = R+ + R-  if R- >= 0,  else  -R-                 (Alg. 1 with beta = 0, gamma = 1)
    The same ``max`` step as ``pu_risk``, on a classifier: used by the filtering baseline (``prior.py``).
    """
    if not 0.0 < prior < 1.0:
        raise ConfigError(f"prior={prior} is invalid: the class prior must be in (0, 1)")
    logits = logits.float().reshape(-1)
    is_unlabeled = role == UNLABELED
    is_sensitive = role == LABELED_SENSITIVE
    positive = prior * _masked_mean(torch.sigmoid(-logits), is_sensitive)
    negative = _masked_mean(torch.sigmoid(logits), is_unlabeled) - prior * _masked_mean(torch.sigmoid(logits), is_sensitive)
    loss = torch.where(negative >= 0, positive + negative, -negative)
    return Risk(loss, positive, negative, _nan(logits))


def training_risk(
    method: str,
    error: torch.Tensor,
    role: torch.Tensor,
    *,
    beta: float | None = None,
    correction: str = "abs",
    eta: float = 1.0,
    paper_weighting: bool = True,
    condition: torch.Tensor | None = None,
    num_conditions: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Risk:
    """The risk of ``method`` (one of METHODS) on a batch: ``risk_from_statistics(risk_statistics(...))``.

    ``condition`` (one integer per example: a class or prompt of a conditional model; ``num_conditions`` of them,
    default max + 1) makes PU and PNU risks per-condition (``conditional_pu_risk``). The baselines' losses are
    per-example sums, which conditioning does not change. ``reduce`` combines the statistics of every data-parallel
    rank (``training.distributed.global_sum``) before any risk is formed: the loss is then the global batch's.
    """
    per_condition = condition is not None and method in METHODS_WITH_PRIOR
    if per_condition and num_conditions is None:
        num_conditions = int(condition.max()) + 1 if len(condition) else 1
    statistics = risk_statistics(error, role, condition if per_condition else None,
                                 num_conditions if per_condition else 1)
    if reduce is not None:
        statistics = reduce(statistics)
    return risk_from_statistics(method, statistics, beta=beta, correction=correction, eta=eta,
                                paper_weighting=paper_weighting)
