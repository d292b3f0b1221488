"""Each risk against a float64 hand computation on fixed tensors, stability of s(l), and the nnPU gradient."""

import math

import mpmath
import pytest
import torch

from pudm_bench.errors import ConfigError
from pudm_bench.training.losses import (
    LABELED_NORMAL,
    LABELED_SENSITIVE,
    UNLABELED,
    check_prior,
    denoising_error,
    pnu_risk,
    pu_risk,
    sensitive_loss,
    supervised_risk,
    training_risk,
    unsupervised_risk,
)

# Per-example errors and roles of one fixed batch: 4 unlabeled, 2 labeled sensitive, 1 labeled normal.
ERRORS = [3.0, 5.0, 2.0, 6.0, 1.5, 0.5, 4.0]
ROLES = [UNLABELED, UNLABELED, UNLABELED, UNLABELED, LABELED_SENSITIVE, LABELED_SENSITIVE, LABELED_NORMAL]


def s_hand(l: float) -> float:
    """-log(1 - exp(-l)) at 50 significant digits (1 - exp(-50) rounds to 1 even in float64), then float."""
    with mpmath.workdps(50):
        return float(-mpmath.log(1 - mpmath.exp(-mpmath.mpf(l))))


def batch(dtype=torch.float64):
    return torch.tensor(ERRORS, dtype=dtype), torch.tensor(ROLES)


def test_denoising_error_sums_over_pixels_per_example():
    eps = torch.zeros(2, 3, 4, 4)
    pred = torch.zeros(2, 3, 4, 4)
    pred[0] += 1.0  # every one of 48 entries off by 1
    pred[1, 0, 0, 0] = 2.0
    assert denoising_error(pred, eps).tolist() == [48.0, 4.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sensitive_loss_matches_formula_and_stays_finite(dtype):
    values = torch.tensor([0.0, 1e-8, 1e-3, 0.5, math.log(2), 1.0, 10.0, 50.0, 1e3], dtype=dtype, requires_grad=True)
    s = sensitive_loss(values)
    s.sum().backward()
    assert torch.isfinite(s).all() and torch.isfinite(values.grad).all()
    # Exact values away from the clamp floor (1e-6): compare with float64 hand computation.
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for l, got in zip(values.tolist()[2:], s.tolist()[2:]):
        assert got == pytest.approx(s_hand(l), rel=rtol, abs=1e-300)
    # Large l: s ~ exp(-l), still positive and accurate where 1 - exp(-l) rounds to 1 in float32.
    assert s[7].item() == pytest.approx(math.exp(-50.0), rel=1e-4)
    # s decreases in l: its gradient is negative wherever l is above the floor.
    assert (values.grad[2:-1] < 0).all()


def test_sensitive_loss_naive_formula_would_fail_here():
    """Guard for the test above: the naive float32 formula really is inaccurate at l = 50 (so the test bites)."""
    l = torch.tensor(50.0)
    naive = -torch.log(1 - torch.exp(-l) + 1e-12)
    assert naive.item() == pytest.approx(0.0, abs=1e-10)
    assert sensitive_loss(l).item() > 1e-23


def test_unsupervised_paper_weighting_divides_by_whole_batch():
    e, r = batch()
    u = [3.0, 5.0, 2.0, 6.0]
    assert unsupervised_risk(e, r).loss.item() == pytest.approx(sum(u) / 7)
    assert unsupervised_risk(e, r, paper_weighting=False).loss.item() == pytest.approx(sum(u) / 4)


def test_supervised_weightings():
    e, r = batch()
    u_sum = 3.0 + 5.0 + 2.0 + 6.0
    s_sum = s_hand(1.5) + s_hand(0.5)
    assert supervised_risk(e, r).loss.item() == pytest.approx((u_sum + s_sum) / 7, rel=1e-12)
    assert supervised_risk(e, r, paper_weighting=False).loss.item() == pytest.approx(u_sum / 4 + s_sum / 2, rel=1e-12)


def pu_hand(beta):
    r_pos = beta * (s_hand(1.5) + s_hand(0.5)) / 2
    r_neg = (3.0 + 5.0 + 2.0 + 6.0) / 4 - beta * (1.5 + 0.5) / 2
    return r_pos, r_neg


@pytest.mark.parametrize("correction", ["abs", "max"])
def test_pu_risk_positive_negative_risk(correction):
    e, r = batch()
    risk = pu_risk(e, r, 0.2, correction)
    r_pos, r_neg = pu_hand(0.2)
    assert risk.positive_risk.item() == pytest.approx(r_pos, rel=1e-12)
    assert risk.negative_risk.item() == pytest.approx(r_neg, rel=1e-12)
    assert risk.loss.item() == pytest.approx(r_pos + r_neg, rel=1e-12)  # R- > 0 here: both corrections agree


def negative_batch():
    """U errors small, S errors large: R- = mean_U l - beta * mean_S l < 0 for beta = 0.5."""
    e = torch.tensor([1.0, 1.0, 20.0, 30.0], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([UNLABELED, UNLABELED, LABELED_SENSITIVE, LABELED_SENSITIVE])
    return e, r


def test_pu_corrections_when_negative_risk_below_zero():
    e, r = negative_batch()
    r_pos = 0.5 * (s_hand(20.0) + s_hand(30.0)) / 2
    r_neg = 1.0 - 0.5 * 25.0
    assert r_neg < 0
    assert pu_risk(e, r, 0.5, "abs").loss.item() == pytest.approx(r_pos + abs(r_neg), rel=1e-12)
    assert pu_risk(e, r, 0.5, "max").loss.item() == pytest.approx(-r_neg, rel=1e-12)


def test_max_correction_gradient_pushes_negative_risk_up():
    """nnPU: when R- < 0 the step descends -R-, i.e. gradient descent raises R-.

    d(-R-)/dl_U = -1/n_U < 0 (descent raises U errors); d(-R-)/dl_S = +beta/n_S > 0 (descent lowers S errors).
    """
    e, r = negative_batch()
    pu_risk(e, r, 0.5, "max").loss.backward()
    assert e.grad.tolist() == pytest.approx([-0.5, -0.5, 0.25, 0.25])
    # One descent step on the errors moves R- up.
    with torch.no_grad():
        stepped = e - 0.1 * e.grad
    before = pu_risk(e.detach(), r, 0.5, "max").negative_risk.item()
    after = pu_risk(stepped, r, 0.5, "max").negative_risk.item()
    assert after > before


def test_abs_correction_gradient_is_r_plus_minus_r_minus_when_negative():
    e, r = negative_batch()
    pu_risk(e, r, 0.5, "abs").loss.backward()
    ds = [-1.0 / math.expm1(20.0), -1.0 / math.expm1(30.0)]  # d s / d l
    expected = [-0.5, -0.5, 0.5 * ds[0] / 2 + 0.25, 0.5 * ds[1] / 2 + 0.25]
    assert e.grad.tolist() == pytest.approx(expected, rel=1e-9)


def test_pnu_adds_weighted_labeled_normal_term():
    e, r = batch()
    r_pos, r_neg = pu_hand(0.1)
    risk = pnu_risk(e, r, 0.1, "abs", eta=0.5)
    assert risk.labeled_normal_risk.item() == pytest.approx(4.0)
    assert risk.loss.item() == pytest.approx(r_pos + abs(r_neg) + 0.5 * 4.0, rel=1e-12)


@pytest.mark.parametrize("l", [0.0, 1e-8, 1e3])
@pytest.mark.parametrize("method", ["unsupervised", "supervised", "pu", "pnu"])
def test_no_nan_at_extreme_errors(method, l):
    e = torch.full((7,), l, dtype=torch.float32, requires_grad=True)
    beta = 0.1 if method in ("pu", "pnu") else None
    risk = training_risk(method, e, torch.tensor(ROLES), beta=beta, correction="max")
    risk.loss.backward()
    assert torch.isfinite(risk.loss) and torch.isfinite(e.grad).all()


def test_batch_without_labeled_sensitive_examples_is_finite():
    e = torch.tensor([1.0, 2.0], dtype=torch.float64)
    r = torch.tensor([UNLABELED, UNLABELED])
    risk = pu_risk(e, r, 0.1, "abs")
    assert risk.positive_risk.item() == 0.0 and risk.negative_risk.item() == pytest.approx(1.5)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5, None])
def test_prior_outside_open_interval_rejected(beta):
    with pytest.raises(ConfigError, match="beta"):
        check_prior("pu", beta)


@pytest.mark.parametrize("method", ["unsupervised", "supervised"])
def test_prior_refused_for_methods_without_one(method):
    with pytest.raises(ConfigError, match="does not use beta"):
        check_prior(method, 0.1)


def test_unknown_correction_rejected():
    e, r = batch()
    with pytest.raises(ConfigError, match="correction"):
        pu_risk(e, r, 0.1, "clip")
