"""Small statistics used by the evaluation protocol."""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%: z = 1.959964).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n, which
    is where robot success rates often sit. Returns (low, high); (0, 1) when trials == 0.
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test for paired 0/1 outcomes: b pairs where only A succeeded,
    c where only B did. Under "no difference" each discordant pair goes either way with
    probability 1/2, so min(b, c) ~ Binomial(b + c, 1/2) in its lower tail; p = 2 P(X <= min),
    capped at 1 (1.0 when there is no discordant pair)."""
    if b < 0 or c < 0:
        raise ValueError(f"need b, c >= 0, got {b}, {c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    strata: Sequence[str],
    num_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the paired difference mean-over-strata(b) - mean-over-strata(a)
    (the mean over tasks of each task's success-rate difference, as the protocol's headline):
    each resample draws every stratum's episodes with replacement, the same draw for A and B,
    so the pairing stays. Seeded: the same inputs give the same interval."""
    import numpy as np

    if not len(a) == len(b) == len(strata):
        raise ValueError(f"a, b and strata differ in length: {len(a)}, {len(b)}, {len(strata)}")
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    labels = np.asarray(strata)
    rng = np.random.default_rng(seed)
    means = np.zeros(num_resamples)
    names = list(dict.fromkeys(labels.tolist()))
    for name in names:
        d = diff[labels == name]
        idx = rng.integers(0, len(d), size=(num_resamples, len(d)))
        means += d[idx].mean(1)
    means /= len(names)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


# Two-sided 95% critical values t_{0.975, df} of Student's t (standard tables; df 1..10).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def seed_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% Student-t interval of the mean of per-seed results: mean +- t_{0.975, n-1} s / sqrt(n)
    (with 3 seeds t = 4.303, so the interval is wide: it is what 3 seeds support). Beyond 11
    seeds the normal 1.96 stands in (t_{0.975, 10} = 2.228 already). One value: (v, v)."""
    n = len(values)
    if n == 0:
        raise ValueError("seed_interval needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.959964
    half = t * sd / math.sqrt(n)
    return mean - half, mean + half
