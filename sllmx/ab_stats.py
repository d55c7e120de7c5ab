"""The statistics of a blind pairwise A/B study (``python -m sllmx.abtest score``): win rates with Wilson
intervals and a sign test, the judges' agreement, and a Bradley–Terry ranking with bootstrap intervals.

- **Win rate.** Of the items a judgment decided (one system better), the share the first system won, with the
  95% Wilson score interval (Wilson, 1927) and the two-sided exact sign test against 1/2 (Dixon & Mood, 1946),
  both from ``scipy.stats.binomtest``.  Ties and "both bad" are left out of both and reported beside them;
  ``win_rate_ties_half`` counts each of them as half a win for either side, over every judged item.
- **Agreement.** Cohen's kappa for two judges (Cohen, 1960), Fleiss' kappa for three or more (Fleiss, 1971),
  from ``statsmodels.stats.inter_rater``, over the four labels as judged (A, B, tie, both bad) on the items
  every judge judged.
- **Bradley–Terry** (Bradley & Terry, 1952): log-strengths θ with P(i beats j) = 1 / (1 + exp(θj − θi)),
  centred at 0, fitted by ``choix.ilsr_pairwise_dense`` (iterative Luce spectral ranking, whose fixed point is
  the maximum-likelihood estimate; Maystre & Grossglauser, 2015) with choix's regularization
  ``alpha`` = :data:`BT_ALPHA` (added to the rates of its Markov chain), so that a system that wins every
  comparison still gets a finite strength.  A tie or "both bad" counts as half a win for each side.  The 95%
  intervals of θ and of the rank are percentiles of a seeded bootstrap over the items (Efron & Tibshirani,
  1993).

Only the standard library, numpy, scipy, statsmodels and choix; nothing of sllmx's runs.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

#: the labels a judge gives, in the order of the kappa tables
LABELS = ("A", "B", "tie", "both_bad")
#: the confidence level of every interval here
LEVEL = 0.95
#: choix's regularization ``alpha`` for the Bradley–Terry fit (0 would be the plain maximum-likelihood
#: estimate, which does not exist when a system wins all its comparisons)
BT_ALPHA = 0.01


def win_rate(wins: int, losses: int, ties: int = 0, both_bad: int = 0) -> dict[str, Any]:
    """The first system's record against the second: its win rate among the decided items with the
    :data:`LEVEL` Wilson interval, the two-sided sign-test p-value, and the win rate with ties and both-bad
    counted as half a win each over all judged items.  Values that need at least one item are None without."""
    from scipy.stats import binomtest

    decided, judged = wins + losses, wins + losses + ties + both_bad
    out: dict[str, Any] = {"wins": wins, "losses": losses, "ties": ties, "both_bad": both_bad,
                           "decided": decided, "judged": judged, "win_rate": None, "ci_low": None,
                           "ci_high": None, "sign_test_p": None, "win_rate_ties_half": None}
    if decided:
        test = binomtest(wins, decided, 0.5, alternative="two-sided")
        ci = test.proportion_ci(confidence_level=LEVEL, method="wilson")
        out.update(win_rate=wins / decided, ci_low=float(ci.low), ci_high=float(ci.high),
                   sign_test_p=float(test.pvalue))
    if judged:
        out["win_rate_ties_half"] = (wins + (ties + both_bad) / 2) / judged
    return out


def agreement(ratings: Sequence[Sequence[str]], judges: Optional[int] = None) -> dict[str, Any]:
    """The judges' agreement on items × judges labels (each one of :data:`LABELS`); ``judges`` counts them
    when there is no item.

    Two judges: Cohen's kappa (``statsmodels.stats.inter_rater.cohens_kappa`` of the 4 × 4 table, with its
    asymptotic 95% interval); three or more: Fleiss' kappa (``fleiss_kappa`` of ``aggregate_raters``).
    ``observed`` is the raw agreement (two judges: the share of items they labelled alike; more: Fleiss' P̄,
    the mean share of agreeing judge pairs per item).  ``kappa`` is None, with ``reason``, when there are
    fewer than two items or every label is the same (chance agreement is then 1 and kappa is undefined).
    """
    import numpy as np
    from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa, fleiss_kappa

    items = len(ratings)
    judges = len(ratings[0]) if ratings else (judges or 0)
    method = "Cohen's kappa" if judges == 2 else "Fleiss' kappa"
    out: dict[str, Any] = {"method": method, "judges": judges, "items": items, "kappa": None,
                           "ci_low": None, "ci_high": None, "observed": None, "reason": None}
    if judges < 2 or not items:
        out["reason"] = "one judge" if judges < 2 else "no item was judged by every judge"
        return out
    codes = np.array([[LABELS.index(x) for x in row] for row in ratings], dtype=int)
    counts, _ = aggregate_raters(codes, n_cat=len(LABELS))
    out["observed"] = float(np.mean((np.sum(counts ** 2, axis=1) - judges) / (judges * (judges - 1))))
    if items < 2:
        out["reason"] = f"{items} item(s) judged by every judge"
        return out
    if np.count_nonzero(counts.sum(axis=0)) < 2:
        out["reason"] = "every judgment has the same label; kappa is undefined"
        return out
    if judges == 2:
        table = np.zeros((len(LABELS), len(LABELS)))
        np.add.at(table, (codes[:, 0], codes[:, 1]), 1)
        result = cohens_kappa(table)
        out.update(kappa=float(result.kappa), ci_low=float(result.kappa_low), ci_high=float(result.kappa_upp))
    else:
        out["kappa"] = float(fleiss_kappa(counts, method="fleiss"))
    return out


def _bt_fit(n_systems: int, outcomes: Sequence[tuple[int, int, float]], alpha: float = BT_ALPHA) -> Any:
    """Log-strengths (centred at 0) from ``(i, j, result)`` outcomes (1: i won, 0: j won, 0.5: a tie):
    ``choix.ilsr_pairwise_dense`` on the matrix of wins, a tie adding ½ to either side."""
    import choix
    import numpy as np

    wins = np.zeros((n_systems, n_systems))
    for i, j, result in outcomes:
        wins[i, j] += result
        wins[j, i] += 1 - result
    if not wins.any():
        return np.zeros(n_systems)
    theta = np.asarray(choix.ilsr_pairwise_dense(wins, alpha=alpha, max_iter=1000), dtype=float)
    return theta - theta.mean()


def _ranks(theta: Any) -> Any:
    """Rank 1 for the largest strength; equal strengths share the better rank."""
    import numpy as np

    return np.array([1 + int(np.sum(theta > t + 1e-9)) for t in theta])


def bradley_terry(n_systems: int, outcomes: Sequence[tuple[int, int, float]], seed: int = 0,
                  n_boot: int = 1000) -> list[dict[str, Any]]:
    """The Bradley–Terry ranking of ``n_systems`` from one outcome per item, ``(i, j, result)`` (1: system i
    won, 0: system j won, 0.5: a tie or both bad), with :data:`LEVEL` percentile intervals from ``n_boot``
    bootstrap resamples of the items (``numpy.random.default_rng(seed)``).

    Returns:
        one dict per system, best first: ``system`` (its index), ``rank``, ``theta`` (log-strength, the
        systems' mean 0), ``theta_low``/``theta_high``, ``rank_low``/``rank_high``, and its ``wins``,
        ``ties`` and ``losses`` over the outcomes.
    """
    import numpy as np

    theta = _bt_fit(n_systems, outcomes)
    lows = highs = rank_lows = rank_highs = [None] * n_systems
    if outcomes and n_boot > 0:
        rng = np.random.default_rng(seed)
        boot_theta, boot_rank = [], []
        for _ in range(n_boot):
            sample = [outcomes[k] for k in rng.integers(0, len(outcomes), len(outcomes))]
            t = _bt_fit(n_systems, sample)
            boot_theta.append(t)
            boot_rank.append(_ranks(t))
        tail = 100 * (1 - LEVEL) / 2
        lows, highs = np.percentile(boot_theta, [tail, 100 - tail], axis=0)
        rank_lows, rank_highs = np.percentile(boot_rank, [tail, 100 - tail], axis=0)
    ranks = _ranks(theta)
    rows = []
    for s in range(n_systems):
        wins = sum(1 for i, j, r in outcomes if (i == s and r == 1) or (j == s and r == 0))
        losses = sum(1 for i, j, r in outcomes if (i == s and r == 0) or (j == s and r == 1))
        ties = sum(1 for i, j, r in outcomes if s in (i, j) and r == 0.5)
        rows.append({"system": s, "rank": int(ranks[s]), "theta": float(theta[s]),
                     "theta_low": None if lows[s] is None else float(lows[s]),
                     "theta_high": None if highs[s] is None else float(highs[s]),
                     "rank_low": None if rank_lows[s] is None else int(np.floor(rank_lows[s])),
                     "rank_high": None if rank_highs[s] is None else int(np.ceil(rank_highs[s])),
                     "wins": wins, "ties": ties, "losses": losses})
    rows.sort(key=lambda r: (r["rank"], -r["theta"], r["system"]))
    return rows


def majority(labels: Sequence[str]) -> str:
    """One item's outcome from its judges' labels: the most frequent one; a split vote (two labels equally
    frequent at the top) is a tie."""
    counts = {label: labels.count(label) for label in LABELS}
    top = max(counts.values())
    best = [label for label, c in counts.items() if c == top]
    return best[0] if len(best) == 1 else "tie"
