"""The confidence interval of an accuracy difference, and the non-inferiority verdict."""

import numpy as np
import pytest

from odk.stats import BOOTSTRAP, accuracy_delta_ci, verdict

N = 10_000


def _right_on(fraction: float, seed: int = 0) -> np.ndarray:
    """Correctness of a model right on `fraction` of N images, chosen at random."""
    correct = np.zeros(N, bool)
    correct[np.random.default_rng(seed).permutation(N)[: round(fraction * N)]] = True
    return correct


def _plus(correct: np.ndarray, extra: float, seed: int = 1) -> np.ndarray:
    """`correct`, plus right answers on `extra * N` images it got wrong."""
    better = correct.copy()
    wrong = np.flatnonzero(~correct)
    better[np.random.default_rng(seed).permutation(wrong)[: round(extra * N)]] = True
    return better


def test_identical_models_give_an_interval_at_zero():
    a = _right_on(0.6)
    result = accuracy_delta_ci(a, a)
    assert result["delta"] == 0 and result["ci95"][0] <= 0 <= result["ci95"][1]
    assert result["method"] == BOOTSTRAP


def test_one_seed_bootstrap_centres_on_a_five_point_gain():
    a = _right_on(0.6)
    b = _plus(a, 0.05)
    result = accuracy_delta_ci(b, a)
    low, high = result["ci95"]
    assert result["delta"] == pytest.approx(0.05)
    # sd of the paired difference: sqrt(0.05 * 0.95 / N) = 0.0022, so +-1.96 sd ~ +-0.0043
    assert 0.0450 < low < 0.0470 and 0.0530 < high < 0.0550
    assert accuracy_delta_ci(b, a) == result  # a fixed bootstrap seed: reproducible


def test_one_seed_bootstrap_interval_covers_half_the_draws_of_a_noisy_pair():
    # Two independent models of equal skill: the delta is noise, so the interval holds 0.
    a, b = _right_on(0.6, seed=2), _right_on(0.6, seed=3)
    low, high = accuracy_delta_ci(a, b)["ci95"]
    assert low < 0 < high and 0.02 < high - low < 0.04  # 1.96 * 2 * sqrt(2 * .24 / N) = 0.027


def test_several_seeds_widen_the_interval_by_the_seed_spread():
    base = np.stack([_right_on(0.6, seed=s) for s in range(3)])
    # ODK gains 4, 5 and 6 points on the three seeds: mean 5, sd 1 point.
    odk = np.stack([_plus(base[i], g, seed=10 + i) for i, g in enumerate((0.04, 0.05, 0.06))])
    result = accuracy_delta_ci(odk, base)
    low, high = result["ci95"]
    assert result["delta"] == pytest.approx(0.05)
    assert result["deltas"] == pytest.approx([0.04, 0.05, 0.06])
    # se = 0.01 / sqrt(3) = 0.0058 (plus a little test-set variance), t(0.975, ~2.2 df) = 4.1:
    # a half-width of about 2.4 points, where the images alone would give 0.2
    assert 0.05 - 0.03 < low < 0.05 - 0.022 and 0.05 + 0.022 < high < 0.05 + 0.03
    assert "t-interval over 3 seeds" in result["method"]


def test_several_identical_seeds_leave_only_the_test_set_variance():
    base = np.stack([_right_on(0.6, seed=s) for s in range(2)])
    odk = np.stack([_plus(base[i], 0.05, seed=20 + i) for i in range(2)])
    low, high = accuracy_delta_ci(odk, base)["ci95"]
    assert 0.044 < low < 0.05 < high < 0.056


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="one shape"):
        accuracy_delta_ci(np.ones((2, 5), bool), np.ones((3, 5), bool))


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        ([-0.02, 0.01], "non-inferior"),
        ([-0.08, -0.031], "inferior"),
        ([-0.05, 0.01], "inconclusive"),
        ([-0.03, 0.0], "inconclusive"),  # the margin itself is not above it
    ],
)
def test_verdict_reads_the_interval_against_the_margin(ci, expected):
    assert verdict(ci, 0.03) == expected
