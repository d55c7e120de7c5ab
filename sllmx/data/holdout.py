"""The seeded dev / test hold-out of the train rows: fractions rounded per split, groups of duplicates kept
on one side, optionally stratified by a column (each stratum split in proportion)."""

from __future__ import annotations

import random
from typing import Optional

from sllmx.errors import SllmxError


def _count(n: int, fraction: float, what: str) -> int:
    if not 0 <= fraction < 1:
        raise SllmxError(f"data.{what} must be at least 0 and below 1, got {fraction}")
    return max(1, round(n * fraction)) if fraction > 0 else 0


def hold_out(n: int, seed: int, test_fraction: float, dev_fraction: float,
             max_dev_rows: Optional[int]) -> tuple[list[int], list[int], list[int]]:
    """Split row indices ``0..n-1`` into (train, dev, test), each sorted.

    One permutation seeded by ``seed`` (``random.Random``): test takes its first
    ``round(n * test_fraction)`` indices (at least 1 when the fraction is > 0), dev the next
    ``round(n * dev_fraction)`` (capped at ``max_dev_rows``); train keeps the rest.  Because
    test is taken first, changing ``dev_fraction`` never changes the test rows.
    Pass a fraction of 0 for a split that comes from its own file.

    Raises:
        SllmxError: a fraction outside [0, 1), or too few rows to leave any for training.
    """
    return hold_out_groups([[i] for i in range(n)], seed, test_fraction, dev_fraction, max_dev_rows)


def _allocate(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over buckets in proportion to ``sizes`` (largest remainder; sums to ``total``)."""
    n = sum(sizes)
    exact = [total * k / n for k in sizes]
    out = [int(x) for x in exact]
    for j in sorted(range(len(sizes)), key=lambda j: (-(exact[j] - out[j]), j))[:total - sum(out)]:
        out[j] += 1
    return out


def hold_out_groups(groups: list[list[int]], seed: int, test_fraction: float, dev_fraction: float,
                    max_dev_rows: Optional[int], strata: Optional[dict[int, str]] = None,
                    ) -> tuple[list[int], list[int], list[int]]:
    """Split groups of row indices into (train, dev, test) row indices, each sorted, never
    cutting a group: rows that duplicate each other stay in one split, so none leaks.

    The groups are shuffled once by ``random.Random(seed)``; test takes groups until it holds
    ``round(n * test_fraction)`` rows (at least 1 when the fraction is > 0), dev the next
    ``round(n * dev_fraction)`` (capped at ``max_dev_rows``), train the rest.  Test is taken
    first, so changing ``dev_fraction`` never changes test.  With ``strata`` (row index → label,
    read from each group's first row) every label gets its share of test and dev (largest
    remainder), so the label proportions of the splits match.  With one row per group and no
    strata this is :func:`hold_out`.

    Raises:
        SllmxError: a fraction outside [0, 1), or too few rows to leave any for training.
    """
    n = sum(len(g) for g in groups)
    n_test = _count(n, test_fraction, "test_fraction")
    n_dev = _count(n, dev_fraction, "dev_fraction")
    if max_dev_rows is not None and max_dev_rows >= 0:
        n_dev = min(n_dev, max_dev_rows)
    if n_test + n_dev >= n:
        raise SllmxError(f"{n} rows are too few to hold out {n_test} test and {n_dev} dev rows and keep some for "
                         f"training; give more rows, a data.dev / data.test file, or lower data.dev_fraction / "
                         f"data.test_fraction")
    buckets: dict[str, list[list[int]]] = {}
    for g in groups:
        buckets.setdefault(strata[g[0]] if strata else "", []).append(g)
    keys = sorted(buckets)
    sizes = [sum(len(g) for g in buckets[k]) for k in keys]
    want_test, want_dev = _allocate(n_test, sizes), _allocate(n_dev, sizes)
    rng = random.Random(seed)
    test: list[int] = []
    dev: list[int] = []
    train: list[int] = []
    for key, t_want, d_want in zip(keys, want_test, want_dev):
        bucket = buckets[key]
        order = list(range(len(bucket)))
        rng.shuffle(order)
        got_t = got_d = 0
        for j in order:
            g = bucket[j]
            if got_t < t_want:
                test += g
                got_t += len(g)
            elif got_d < d_want:
                dev += g
                got_d += len(g)
            else:
                train += g
    if not train:
        raise SllmxError(f"{n} rows in {len(groups)} groups of duplicates leave none for training after holding "
                         f"out dev and test; lower data.dev_fraction / data.test_fraction")
    return sorted(train), sorted(dev), sorted(test)
