"""The statistics of kinject, one implementation each: the mean and standard error results.json
reports (`mean_stderr`), percentile bootstrap CIs of an accuracy (`bootstrap_ci`) and of a paired
difference (`paired_bootstrap`, used both for results.json's `rag_gain` and for the report, so
the two print the same interval), McNemar's exact test (`mcnemar_exact`), a sample-size estimate
(`questions_needed`), and `compare`, which pairs two conditions' per-question outcomes.

Why paired statistics: every method of a task is scored on the same questions, so the honest
question is "on how many questions does method B get right what A gets wrong, and vice versa?".
McNemar's exact test on those discordant pairs and a paired bootstrap of the difference use that
pairing; comparing two independent CIs would miss real differences and invite eyeballing. A
comparison only calls B better or worse when both agree (p < 0.05 and the CI excludes 0).

The heavy lifting is scipy's (`scipy.stats.bootstrap`, `binomtest`, `norm`), imported on first use
so that `kinject --help` stays fast.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BOOT_ITERS = 2000     # bootstrap resamples: the CI ends are stable to ~0.005 at n = 100
BOOT_SEED = 0         # fixed, so the same inputs always give the same CI
BOOT_BATCH = 250      # resamples drawn at once: bounds memory (250 × n floats) at any n
LEVEL = 0.95
ALPHA = 0.05
POWER = 0.80


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error with the n-1 sample variance, as lm-eval reports it."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def bootstrap_ci(values: Sequence[float], iters: int = BOOT_ITERS, seed: int = BOOT_SEED,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean, resampling questions: `scipy.stats.bootstrap` with
    `method="percentile"`, BOOT_ITERS (2000) resamples and a generator seeded with BOOT_SEED, so
    the same values always give the same interval. Constant values (and a single value) have
    the degenerate interval (x, x)."""
    import numpy as np
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if x.size < 2 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, n_resamples=iters, batch=BOOT_BATCH, confidence_level=level,
                    method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], iters: int = BOOT_ITERS, seed: int = BOOT_SEED,
                     level: float = LEVEL) -> dict[str, float]:
    """Mean of b − a over the same questions, with a percentile bootstrap CI that resamples the
    questions in pairs (a bootstrap of the per-question differences, so the comparison keeps its
    pairing): {"diff", "ci_low", "ci_high", "level", "n"}, the fields of results.json's
    `rag_gain`. Same resamples and seed as `bootstrap_ci`; the same inputs give the same CI."""
    if len(a) != len(b) or not len(a):
        raise ValueError("paired_bootstrap needs two equally long, non-empty score lists")
    diff = [float(y) - float(x) for x, y in zip(a, b)]
    lo, hi = bootstrap_ci(diff, iters, seed, level)
    return {"diff": sum(diff) / len(diff), "ci_low": lo, "ci_high": hi, "level": level, "n": len(diff)}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: a binomial test of the discordant pairs (questions only A, or
    only B, got right) against 1/2, i.e. `scipy.stats.binomtest`; 1 when there are none."""
    from scipy.stats import binomtest

    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, float(binomtest(only_a, n, 0.5).pvalue))


def questions_needed(diff: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Questions a paired test would need to detect a mean difference `diff` whose per-question
    standard deviation is `sd` (two-sided normal approximation: n = ((z₁₋α/₂ + z_power) · sd / diff)²);
    None when either is 0."""
    if diff == 0 or sd == 0:
        return None
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    return math.ceil((z * sd / abs(diff)) ** 2)


@dataclass(frozen=True)
class Comparison:
    """B versus A on the questions both answered (diff = acc(B) − acc(A))."""

    a: str
    b: str
    n: int
    diff: float
    ci_low: float
    ci_high: float
    only_a: int          # questions A got right and B wrong
    only_b: int          # questions B got right and A wrong
    p: float
    sd: float            # standard deviation of the per-question difference (for a sample-size estimate)

    @property
    def verdict(self) -> str:
        """'better' / 'worse' only when McNemar and the bootstrap CI agree; 'n.s.' otherwise."""
        if self.p < ALPHA and self.ci_low > 0:
            return "better"
        if self.p < ALPHA and self.ci_high < 0:
            return "worse"
        return "n.s."

    def questions_needed(self) -> int | None:
        """Questions a paired test would need to detect a difference this size (5% level, 80% power)."""
        return questions_needed(self.diff, self.sd)


def compare(a: dict[str, int], b: dict[str, int], label_a: str = "A", label_b: str = "B") -> Comparison | None:
    """Pair two conditions' per-question correctness by item id; None when they share no question."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    xa = [a[i] for i in common]
    xb = [b[i] for i in common]
    boot = paired_bootstrap(xa, xb)
    only_a = sum(1 for u, v in zip(xa, xb) if u and not v)
    only_b = sum(1 for u, v in zip(xa, xb) if v and not u)
    sd = statistics.stdev([v - u for u, v in zip(xa, xb)]) if len(common) > 1 else 0.0
    return Comparison(label_a, label_b, len(common), boot["diff"], boot["ci_low"], boot["ci_high"],
                      only_a, only_b, mcnemar_exact(only_a, only_b), sd)

