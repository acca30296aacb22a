"""Per-configuration figures: accuracy with its interval, and mean compute per query on each axis."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ttc.report.data import FIGURES, Configuration, Query
from ttc.report.stats import RESAMPLES, bootstrap_ci


@dataclass
class Measured:
    config: Configuration
    n: int
    errors: int
    accuracy: float
    ci: tuple[float, float]
    mean: dict[str, float]  # per-query means of the ledger figures, over queries without an error
    cache_hit: float | None  # cached / ideal cached tokens, over queries where the ideal is above 0

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def family(self) -> str:
        return self.config.family


def measure(config: Configuration, resamples: int = RESAMPLES, seed: int = 0) -> Measured:
    queries = config.queries
    correct = [1.0 if q.correct else 0.0 for q in queries]
    # As in summary.json: an errored query counts as wrong but its partial ledger stays out of the means
    ok = [q for q in queries if q.error is None]
    mean = {k: (sum(q.figures[k] for q in ok) / len(ok) if ok else 0.0) for k in FIGURES}
    with_ideal = [q for q in queries if q.figures["ideal_cached_tokens"] > 0]
    ideal = sum(q.figures["ideal_cached_tokens"] for q in with_ideal)
    cached = sum(q.figures["cached_tokens"] for q in with_ideal)
    return Measured(
        config=config,
        n=len(queries),
        errors=len(queries) - len(ok),
        accuracy=sum(correct) / len(correct) if correct else math.nan,
        ci=bootstrap_ci(correct, resamples=resamples, seed=seed),
        mean=mean,
        cache_hit=cached / ideal if ideal > 0 else None,
    )


@dataclass(frozen=True)
class Axis:
    """One compute measure: a plot file, a column, and how to read it off a configuration."""

    key: str
    filename: str
    title: str  # "Accuracy vs {title}"
    label: str  # x-axis label, with unit
    value: Callable[[Measured], float]
    bytes: bool = False  # format ticks as KiB/MiB/GiB


def _total(figure: str) -> Callable[[Measured], float]:
    # Verifier (PRM) work is compute the strategy spent too: GPU-seconds and dollars include it
    return lambda m: m.mean[figure] + m.mean[f"verifier_{figure}"]


AXES = (
    Axis("tokens", "accuracy_vs_tokens.png", "generated tokens", "generated tokens per query (mean, log scale)",
         lambda m: m.mean["generated_tokens"]),
    Axis("gpu_seconds", "accuracy_vs_gpu_seconds.png", "GPU time",
         "GPU-seconds per query, policy + verifier (mean, log scale)", _total("gpu_seconds")),
    Axis("usd", "accuracy_vs_usd.png", "cost", "US$ per 1,000 queries, policy + verifier (log scale)",
         lambda m: 1000 * _total("usd")(m)),
    Axis("kv_peak", "accuracy_vs_kv_peak.png", "KV-cache peak",
         "KV-cache peak per query, shared prefixes counted once (mean, log scale)",
         lambda m: m.mean["kv_peak_bytes"], bytes=True),
)
AXIS = {a.key: a for a in AXES}


def difficulty_key(value: int | float | str | None) -> tuple[int, float, str]:
    """Numbers in numeric order, then text, then the queries without a difficulty."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, int | float):
        return (0, float(value), "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def by_difficulty(queries: list[Query]) -> dict[int | float | str | None, tuple[float, int]]:
    """Accuracy and query count per difficulty level."""
    groups: dict[int | float | str | None, list[bool]] = {}
    for q in queries:
        groups.setdefault(q.difficulty, []).append(q.correct)
    return {d: (sum(v) / len(v), len(v)) for d, v in groups.items()}
