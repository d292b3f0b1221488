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

from dataclasses import dataclass

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


def unsupervised_risk(error: torch.Tensor, role: torch.Tensor, paper_weighting: bool = True) -> Risk:
    """Standard DDPM training on U only: mean_U l(x) (Ho et al., 2020, L_simple with a summed error).

    With ``paper_weighting`` (default) the U examples' error is divided by the whole batch size, i.e. the batch
    mean of (1 - y) * l, as the paper's experiments computed it; otherwise by the number of U examples.
    """
    is_unlabeled = role == UNLABELED
    if paper_weighting:
        loss = (error * is_unlabeled.to(error.dtype)).mean()
    else:
        loss = _masked_mean(error, is_unlabeled)
    nan = _nan(error)
    return Risk(loss, nan, nan, nan)


def supervised_risk(error: torch.Tensor, role: torch.Tensor, paper_weighting: bool = True) -> Risk:
    """Naive supervised baseline: all of U treated as normal, S as sensitive.

    paper_weighting=True (default): batch mean of (1 - y) * l(x) + y * s(x), so S weighs in by its share of the
    batch, as in the paper's experiments. False: mean_U l(x) + mean_S s(x), S weighted equally with U (this
    variant collapsed to all-sensitive samples on digits in a trial run; see docs/concepts.md).
    """
    is_unlabeled = role == UNLABELED
    is_sensitive = role == LABELED_SENSITIVE
    s = sensitive_loss(error)
    if paper_weighting:
        loss = (error * is_unlabeled.to(error.dtype) + s * is_sensitive.to(error.dtype)).mean()
        positive = (s * is_sensitive.to(error.dtype)).mean()
        negative = (error * is_unlabeled.to(error.dtype)).mean()
    else:
        positive = _masked_mean(s, is_sensitive)
        negative = _masked_mean(error, is_unlabeled)
        loss = negative + positive
    return Risk(loss, positive, negative, _nan(error))


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
    if not 0.0 < beta < 1.0:
        raise ConfigError(f"beta={beta} is invalid: the class prior must be in (0, 1)")
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; allowed: {', '.join(CORRECTIONS)}")
    is_unlabeled = role == UNLABELED
    is_sensitive = role == LABELED_SENSITIVE
    positive = beta * _masked_mean(sensitive_loss(error), is_sensitive)
    negative = _masked_mean(error, is_unlabeled) - beta * _masked_mean(error, is_sensitive)
    if correction == "abs":
        loss = positive + negative.abs()
    else:
        loss = torch.where(negative >= 0, positive + negative, -negative)
    return Risk(loss, positive, negative, _nan(error))


def conditional_pu_risk(error: torch.Tensor, role: torch.Tensor, condition: torch.Tensor, beta: float,
                        correction: str, eta: float | None = None) -> Risk:
    """The PU(-N) risk of a conditional model: one risk per condition, weighted by the condition's share of the batch.

    A conditional model learns p(x | c); the paper's conditional extension applies the PU objective to each
    condition's own U_c and S_c (Sec. 4, conditional case), so for the conditions c present in the batch
        loss = sum_c (n_c / n) * loss_c,   loss_c = pu_risk (or pnu_risk) on the examples with condition c,
    each with its own correction (a negative R-_c is corrected even when the batch-wide R- is positive). R+ and R-
    are reported as the same weighted sums. With one condition this is ``pu_risk`` exactly.
    """
    total = torch.zeros((), dtype=error.dtype, device=error.device)
    positive, negative, normal = torch.zeros_like(total), torch.zeros_like(total), torch.zeros_like(total)
    n = float(len(error))
    # Conditions are few (a split's conditions or prompts), so a loop over them is cheap; it keeps each
    # condition's risk exactly the unconditional formula on its sub-batch.
    for c in torch.unique(condition):
        mask = condition == c
        sub = (pu_risk(error[mask], role[mask], beta, correction) if eta is None
               else pnu_risk(error[mask], role[mask], beta, correction, eta))
        weight = mask.sum().to(error.dtype) / n
        total = total + weight * sub.loss
        positive = positive + weight * sub.positive_risk
        negative = negative + weight * sub.negative_risk
        if eta is not None:
            normal = normal + weight * sub.labeled_normal_risk
    return Risk(total, positive, negative, normal if eta is not None else _nan(error))


def pnu_risk(error: torch.Tensor, role: torch.Tensor, beta: float, correction: str, eta: float) -> Risk:
    """PU risk plus a labeled-normal term (the paper's PNU extension, for when some normal data is labeled).

        loss = PU loss + eta * sum_N l(x) / n_N

    The labeled normal examples (role LABELED_NORMAL) enter only through that term; U and S as in ``pu_risk``.
    """
    if eta < 0:
        raise ConfigError(f"eta={eta} is invalid: the labeled-normal weight must be >= 0")
    pu = pu_risk(error, role, beta, correction)
    normal = _masked_mean(error, role == LABELED_NORMAL)
    return Risk(pu.loss + eta * normal, pu.positive_risk, pu.negative_risk, normal)


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
) -> Risk:
    """Dispatch to the risk of ``method`` (one of METHODS).

    ``condition`` (one integer per example: a class or prompt of a conditional model) makes PU and PNU risks
    per-condition (``conditional_pu_risk``). The baselines' losses are per-example sums, which conditioning does
    not change.
    """
    if condition is not None and method in METHODS_WITH_PRIOR:
        return conditional_pu_risk(error, role, condition, float(beta), correction,
                                   eta if method == "pnu" else None)
    if method == "unsupervised":
        return unsupervised_risk(error, role, paper_weighting)
    if method == "supervised":
        return supervised_risk(error, role, paper_weighting)
    if method == "pu":
        return pu_risk(error, role, float(beta), correction)
    if method == "pnu":
        return pnu_risk(error, role, float(beta), correction, eta)
    raise ConfigError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
