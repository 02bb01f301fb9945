"""Rank statistics for judging a scoring: Spearman's correlation and Kendall's tau (used by the adversarial network's
test and benchmark)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks, 1 = smallest; tied values get their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on the ranks, ties averaged)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two sequences of one length, at least 2")
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    if var == 0:
        raise ValueError("spearman is undefined when one sequence is constant")
    return cov / var


def kendall_tau(a: Sequence[str], b: Sequence[str]) -> float:
    """Kendall's tau between two orderings (best first) of the same items."""
    if sorted(a) != sorted(b) or len(a) < 2:
        raise ValueError("kendall_tau needs two orderings of the same items, at least 2")
    pos_a, pos_b = {x: i for i, x in enumerate(a)}, {x: i for i, x in enumerate(b)}
    pairs = list(combinations(a, 2))
    concordant = sum(1 for x, y in pairs if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) > 0)
    return (2 * concordant - len(pairs)) / len(pairs)
