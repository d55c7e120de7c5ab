"""Is a fine-tuned model better than a baseline on the same examples?  A paired comparison of per-example
scores: the mean difference with a paired bootstrap interval, a sign test, and the verdict.

Both models answered the same examples, so the comparison is *paired*: each example's difference
``candidate − baseline`` is one observation, and the variation between examples (some are easy for both,
some hard for both) cancels out.  Two views of the same differences:

- the mean difference with a BCa bootstrap interval (:func:`scipy.stats.bootstrap`, ``method="BCa"``,
  the bias-corrected and accelerated percentile interval of Efron, 1987) from resampling the examples,
  i.e. the per-example differences, with replacement — the paired bootstrap of Koehn (2004);
- a two-sided sign test (:func:`scipy.stats.binomtest` with p = 1/2) on the examples where the two differ:
  how many are better and how many worse, ties left out; it assumes nothing about the size of the
  differences (Dror et al., 2018, recommend it among the non-parametric tests for paired samples).

The verdict is ``"clear gain"`` when both say so: the whole interval lies on the better side of 0 (above 0
when higher is better, below when lower is better; at level 0.95 a two-sided 95% interval) and the sign test
finds more better than worse examples at p < 1 − level; else ``"no clear gain"``.  The interval alone is
not enough for pass/fail metrics: 3 better, 0 worse and 29 tied examples give an interval above 0 but a sign
test p of 0.25 (and one example, or any constant difference, gives an interval of width 0).

Sources:
    Philipp Koehn. 2004. Statistical Significance Tests for Machine Translation Evaluation. EMNLP 2004.
    Rotem Dror, Gili Baumer, Segev Shlomov, Roi Reichart. 2018. The Hitchhiker's Guide to Testing
    Statistical Significance in Natural Language Processing. ACL 2018.
    Bradley Efron. 1987. Better Bootstrap Confidence Intervals. JASA 82(397).
    SciPy: ``scipy.stats.bootstrap`` and ``scipy.stats.binomtest``,
    https://docs.scipy.org/doc/scipy/reference/generated/scipy.stats.bootstrap.html and
    https://docs.scipy.org/doc/scipy/reference/generated/scipy.stats.binomtest.html
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

#: the verdicts of :func:`paired_comparison`
CLEAR_GAIN, NO_CLEAR_GAIN = "clear gain", "no clear gain"
#: differences at most this far from 0 (relative to the scores, or absolutely) count as ties: a mean over
#: seeds such as (0.1 + 0.7) / 2 is not 0.4 in floating point, and must not count as better or worse
TIE_RTOL, TIE_ATOL = 1e-9, 1e-12


@dataclass
class PairedResult:
    """The comparison of a candidate with a baseline over ``n`` paired examples.

    Attributes:
        n: the number of paired examples.
        mean_difference: mean of ``candidate − baseline`` (in the metric's units; negative is a gain when
            lower is better).
        ci_low, ci_high: the ``level`` bootstrap interval of the mean difference.
        better, worse, equal: examples where the candidate is better, worse or tied, in the metric's direction.
        sign_test_p: two-sided sign test p-value on the ``better + worse`` untied examples (1.0 when all tie).
        level: the interval's confidence level.
        verdict: ``"clear gain"`` when the interval lies wholly on the better side of 0 and the sign test's p is
            below ``1 - level`` with more better than worse examples, else ``"no clear gain"``.
        higher_is_better: the metric's direction.
        interval: how the interval was made: ``"BCa"``; ``"percentile"`` where BCa is undefined
            (a NaN bound); ``"none (all differences equal)"``, where it is that one value.
    """

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    better: int
    worse: int
    equal: int
    sign_test_p: float
    level: float
    verdict: str
    higher_is_better: bool = True
    interval: str = "BCa"

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able data."""
        return asdict(self)


def paired_comparison(candidate: Sequence[float], baseline: Sequence[float], higher_is_better: bool = True,
                      level: float = 0.95, n_resamples: int = 10000, seed: int = 0) -> PairedResult:
    """Compare per-example scores of a candidate with a baseline's on the same examples, in the same order.

    The interval: :func:`scipy.stats.bootstrap` on the differences ``candidate − baseline`` with
    ``statistic=numpy.mean``, ``method="BCa"``, ``confidence_level=level``, ``n_resamples`` and
    ``rng=numpy.random.default_rng(seed)`` (so a result is reproducible).  When every difference is the
    same value there is nothing to resample and BCa is undefined (SciPy returns NaN): the interval is then
    that value; should BCa still give a NaN bound, the percentile interval of the same resamples is used.
    The sign test: :func:`scipy.stats.binomtest` ``(better, better + worse, 0.5)``, two-sided.  Differences
    within ``TIE_RTOL``/``TIE_ATOL`` of 0 (:func:`numpy.isclose`) count as ties and as exactly 0.

    Raises:
        ValueError: when the sequences differ in length, are empty, hold a non-finite value, or ``level`` is not
            between 0 and 1.
    """
    import numpy as np
    from scipy import stats

    cand = np.asarray(candidate, dtype=float)
    base = np.asarray(baseline, dtype=float)
    if cand.ndim != 1 or base.ndim != 1:
        raise ValueError("paired_comparison: candidate and baseline must be flat sequences of per-example scores")
    if len(cand) != len(base):
        raise ValueError(f"paired_comparison: {len(cand)} candidate scores vs {len(base)} baseline scores; "
                         "a paired comparison needs one score of each per example")
    if len(cand) == 0:
        raise ValueError("paired_comparison: no examples to compare (n = 0)")
    if not (np.all(np.isfinite(cand)) and np.all(np.isfinite(base))):
        raise ValueError("paired_comparison: a score is NaN or infinite")
    if not 0 < level < 1:
        raise ValueError(f"paired_comparison: level {level} is not between 0 and 1 (e.g. 0.95)")
    tied = np.isclose(cand, base, rtol=TIE_RTOL, atol=TIE_ATOL)
    diff = np.where(tied, 0.0, cand - base)
    sign = 1.0 if higher_is_better else -1.0
    better = int(np.sum(sign * diff > 0))
    worse = int(np.sum(sign * diff < 0))
    equal = int(np.sum(tied))
    mean = float(np.mean(diff))
    if np.all(diff == diff[0]):
        low = high = float(diff[0])
        how = "none (all differences equal)"
    else:
        result = stats.bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=level, method="BCa",
                                 rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        how = "BCa"
        if math.isnan(low) or math.isnan(high):
            result = stats.bootstrap((diff,), np.mean, confidence_level=level, method="percentile",
                                     bootstrap_result=result, n_resamples=0)
            low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
            how = "percentile"
    p = float(stats.binomtest(better, better + worse, 0.5).pvalue) if better + worse else 1.0
    # both tests must say so: the interval of the mean difference, and the sign test on the untied pairs (a few
    # better examples among many ties give a narrow interval above 0 but no evidence, e.g. 3-0-29: p = 0.25)
    gain = (low > 0 if higher_is_better else high < 0) and better > worse and p < 1 - level
    return PairedResult(n=len(diff), mean_difference=mean, ci_low=low, ci_high=high, better=better, worse=worse,
                        equal=equal, sign_test_p=p, level=level, verdict=CLEAR_GAIN if gain else NO_CLEAR_GAIN,
                        higher_is_better=higher_is_better, interval=how)
