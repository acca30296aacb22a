"""The numbers behind the ranking: bootstrap intervals, Pareto frontiers, accuracy at matched compute.

Everything here works on plain (cost, accuracy) points so the rules can be checked on
hand-made examples. Cost is compute per query (generated tokens, GPU-seconds, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
# Resample in chunks so that a run of many thousand queries stays within a few tens of MB
_CHUNK_CELLS = 2_000_000


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``values``: queries resampled with replacement."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, _CHUNK_CELLS // x.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Point:
    family: str  # the strategy
    cost: float  # compute per query
    accuracy: float


def _dominates(a: Point, b: Point) -> bool:
    return a.cost <= b.cost and a.accuracy >= b.accuracy and (a.cost < b.cost or a.accuracy > b.accuracy)


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the points that no other point dominates (as accurate or more, for no more compute)."""
    return [i for i, p in enumerate(points) if not any(_dominates(q, p) for q in points)]


def dominance_layers(points: Sequence[Point]) -> list[int]:
    """Layer per point: 1 = the Pareto frontier, 2 = the frontier once layer 1 is removed, and so on."""
    layer = [0] * len(points)
    left = list(range(len(points)))
    depth = 0
    while left:
        depth += 1
        front = set(pareto_front([points[i] for i in left]))
        for j in front:
            layer[left[j]] = depth
        left = [i for k, i in enumerate(left) if k not in front]
    return layer


def best_within(points: Sequence[Point], family: str, budget: float) -> int | None:
    """Index of ``family``'s most accurate point costing at most ``budget`` (the cheaper one on ties)."""
    fits = [i for i, p in enumerate(points) if p.family == family and p.cost <= budget]
    if not fits:
        return None
    return max(fits, key=lambda i: (points[i].accuracy, -points[i].cost))


def budget_levels(costs: Sequence[float]) -> list[float]:
    """Powers of two from the first that affords the cheapest point up to the first that affords them all."""
    positive = [c for c in costs if c > 0]
    if not positive:
        return [0.0] if costs else []
    lo = math.ceil(math.log2(min(positive)))
    hi = math.ceil(math.log2(max(positive)))
    return [2.0**k for k in range(lo, hi + 1)]


def matched_compute_scores(points: Sequence[Point]) -> dict[str, float]:
    """Per family, its best-within-budget accuracy averaged over the power-of-two budget levels.

    A family scores 0 at a budget none of its points fits. The levels are evenly spaced in
    log compute and the last affords every point, so this is a right-endpoint Riemann sum of
    the area under the family's accuracy-vs-log-compute envelope, over the width of the range.
    """
    levels = budget_levels([p.cost for p in points])
    scores = {}
    for family in sorted({p.family for p in points}):
        best = [best_within(points, family, b) for b in levels]
        scores[family] = sum(0.0 if i is None else points[i].accuracy for i in best) / len(levels)
    return scores
