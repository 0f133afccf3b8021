"""The verdict with uncertainty: a 95% confidence interval of an accuracy difference.

Both models of a comparison are scored on the same test images after training with the same
seeds, so the difference is paired, image by image and seed by seed.

- One seed: a paired bootstrap over the test images (Efron & Tibshirani, 1993): the images are
  resampled with replacement, the difference of the two accuracies recomputed 10,000 times,
  and the 2.5th and 97.5th percentiles taken.
- Two or more seeds: a paired t-interval over the seeds (the per-seed differences; Dietterich,
  1998), whose standard error also carries the test-set sampling variance of the mean
  difference (the same variance the bootstrap measures), with Welch–Satterthwaite degrees of
  freedom (Satterthwaite, 1946). With three seeds, t = 4.3: few seeds give wide intervals.

The interval is read as a non-inferiority test at the margin `-max_drop`: `non-inferior` when
its lower end is above the margin, `inferior` when its upper end is below it, `inconclusive`
when it straddles it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
VERDICTS = ("non-inferior", "inferior", "inconclusive")
BOOTSTRAP = "paired bootstrap over the test images (1 seed, 10,000 resamples, percentile)"
T_INTERVAL = (
    "paired t-interval over {n} seeds, standard error widened by the test-set sampling variance "
    "(Welch-Satterthwaite degrees of freedom)"
)


def accuracy_delta_ci(
    correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0
) -> dict[str, Any]:
    """Mean test-accuracy difference `a - b` over seeds with its 95% confidence interval.

    Args:
        correct_a: `(n_seeds, n_images)` booleans, True where model a is right; row i is seed i.
        correct_b: the same for model b, with the same seeds in the same order.
        seed: seeds the bootstrap's resampling (one seed only), so the interval is reproducible.

    Returns:
        `delta` (the mean difference), `ci95` (`[low, high]`), `deltas` (one per seed) and
        `method` (in words).
    """
    a, b = np.atleast_2d(correct_a).astype(np.float64), np.atleast_2d(correct_b).astype(np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired correctness arrays must have one shape, got {a.shape}, {b.shape}")
    per_image = (a - b).mean(axis=0)  # (n_images,) seed-averaged paired difference
    deltas = (a - b).mean(axis=1)  # (n_seeds,)
    delta = float(deltas.mean())
    n = len(deltas)
    if n == 1:
        low, high = _bootstrap(per_image, seed)
        method = BOOTSTRAP
    else:
        image_var = float(per_image.var()) / per_image.size  # bootstrap variance of the mean
        seed_var = float(deltas.var(ddof=1)) / n
        se = math.sqrt(seed_var + image_var)
        df = se**4 / (seed_var**2 / (n - 1)) if seed_var > 0 else math.inf
        half = _t_quantile(df) * se
        low, high = delta - half, delta + half
        method = T_INTERVAL.format(n=n)
    return {
        "delta": delta,
        "ci95": [float(low), float(high)],
        "deltas": [float(d) for d in deltas],
        "method": method,
    }


def verdict(ci95: list[float], max_drop: float) -> str:
    """`non-inferior`, `inferior` or `inconclusive` at the margin `-max_drop`."""
    low, high = ci95
    if low > -max_drop:
        return "non-inferior"
    if high < -max_drop:
        return "inferior"
    return "inconclusive"


def _bootstrap(per_image: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of `per_image` over resamples of its entries.

    A resample's mean depends only on how often each distinct value is drawn, so the draws are
    multinomial counts over the few distinct values (-1, 0, 1 for one seed): exact and cheap.
    """
    values, counts = np.unique(per_image, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(per_image.size, counts / per_image.size, size=RESAMPLES)
    means = draws @ values / per_image.size  # (RESAMPLES,)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _t_quantile(df: float) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom."""
    if math.isinf(df):
        return 1.959963984540054
    from scipy.stats import t

    return float(t.ppf(1 - (1 - LEVEL) / 2, df))
