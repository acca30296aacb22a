"""Compose the report from the runs and write report.md, report.html and the plots."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ttc.report.data import Inputs, ReportError, load
from ttc.report.document import Block, Bullets, Document, Image, Section, Table, to_html, to_markdown
from ttc.report.metrics import AXES, AXIS, Measured, by_difficulty, difficulty_key, measure
from ttc.report.plots import human_bytes, plot
from ttc.report.stats import (
    LEVEL,
    RESAMPLES,
    Point,
    best_within,
    budget_levels,
    dominance_layers,
    matched_compute_scores,
    pareto_front,
)


@dataclass
class Ranked:
    """The runs measured and put in order: what every section draws on."""

    inputs: Inputs
    configs: list[Measured]  # leaderboard order
    layers: list[int]  # dominance layer (generated tokens) per config
    front_tokens: set[int]
    front_gpu: set[int]
    families: list[str]  # strategy leaderboard order
    scores: dict[str, float]
    resamples: int
    seed: int


def rank(inputs: Inputs, resamples: int = RESAMPLES, seed: int = 0) -> Ranked:
    measured = [measure(c, resamples=resamples, seed=seed) for c in inputs.configurations]
    tokens = AXIS["tokens"].value
    points = [Point(m.family, tokens(m), m.accuracy) for m in measured]
    layers = dominance_layers(points)
    order = sorted(range(len(measured)), key=lambda i: (layers[i], -points[i].accuracy, points[i].cost,
                                                         measured[i].label))
    measured = [measured[i] for i in order]
    layers = [layers[i] for i in order]
    points = [points[i] for i in order]
    gpu = AXIS["gpu_seconds"].value
    scores = matched_compute_scores(points)
    best = {f: max(m.accuracy for m in measured if m.family == f) for f in scores}
    families = sorted(scores, key=lambda f: (-scores[f], -best[f], f))
    return Ranked(
        inputs=inputs,
        configs=measured,
        layers=layers,
        front_tokens=set(pareto_front(points)),
        front_gpu=set(pareto_front([Point(m.family, gpu(m), m.accuracy) for m in measured])),
        families=families,
        scores=scores,
        resamples=resamples,
        seed=seed,
    )


# ---- formatting --------------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.1f}%"


def ci(m: Measured) -> str:
    lo, hi = m.ci
    return "—" if math.isnan(lo) else f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def num(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def shown_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


# ---- sections ----------------------------------------------------------------------------------------------

RANKING_RULE = (
    "**How strategies are ranked.** Compute is the mean number of **generated tokens per query** "
    "(policy model; verifier work has its own columns). Strategies are compared at matched compute: at a "
    "budget of B tokens per query a strategy scores the accuracy of its most accurate configuration that "
    "generates at most B, and 0% if none of its configurations fits. The budgets are the powers of two from "
    "the first that affords the cheapest configuration in this report to the first that affords them all "
    "(the rows of *Accuracy at matched compute* below). The **matched-compute score** is the strategy's "
    "mean over those budgets: the area under its best-within-budget accuracy curve on a log-token axis, "
    "divided by the width of the range. A strategy that is more accurate at every budget scores higher; one "
    "that only works with many tokens loses the budgets it cannot reach. Ties go to the higher best "
    "accuracy. **Budget wins** counts the budgets at which the strategy is the most accurate (ties count "
    "for each)."
)
CONFIG_RULE = (
    "**How configurations are ranked.** By dominance layer, then accuracy. Layer 1 (★) is the Pareto "
    "frontier: configurations that no other configuration matches or beats in accuracy with no more "
    "generated tokens per query. Layer 2 is the frontier of what is left once layer 1 is removed, and so "
    "on. So a configuration always ranks below any configuration that is at least as accurate for no "
    "more compute. The 95% intervals are percentile bootstrap intervals over queries ({resamples} "
    "resamples, seed {seed}); where two intervals overlap, the order between them is within noise."
)


def leaderboard(r: Ranked) -> Section:
    strategy_rows = []
    wins = _budget_wins(r)
    for i, family in enumerate(r.families, 1):
        mine = [m for m in r.configs if m.family == family]
        best = max(mine, key=lambda m: (m.accuracy, -AXIS["tokens"].value(m)))
        strategy_rows.append([
            str(i), f"`{family}`", pct(r.scores[family]), str(wins.get(family, 0)),
            f"{pct(best.accuracy)} {ci(best)}", f"`{best.label}`", num(AXIS["tokens"].value(best)), str(len(mine)),
        ])
    strategies = Table(
        ["#", "Strategy", "Matched-compute score", "Budget wins", "Best accuracy [95% CI]", "Best configuration",
         "Tokens/query", "Configs"],
        strategy_rows, align="rlrrrlrr",
    )
    config_rows = []
    for i, (m, layer) in enumerate(zip(r.configs, r.layers, strict=True), 1):
        config_rows.append([
            str(i), f"`{m.label}`", pct(m.accuracy), ci(m), num(AXIS["tokens"].value(m)),
            num(AXIS["gpu_seconds"].value(m)), f"{layer} ★" if layer == 1 else str(layer), str(m.n),
        ])
    configs = Table(
        ["#", "Configuration", "Accuracy", "95% CI", "Tokens/query", "GPU-s/query", "Layer", "Queries"],
        config_rows, align="rlrrrrrr",
    )
    return Section("Leaderboard", [
        RANKING_RULE, strategies, CONFIG_RULE.format(resamples=r.resamples, seed=r.seed), configs,
    ])


def _budget_table(r: Ranked) -> tuple[list[float], dict[float, dict[str, Measured | None]]]:
    tokens = AXIS["tokens"].value
    points = [Point(m.family, tokens(m), m.accuracy) for m in r.configs]
    budgets = budget_levels([p.cost for p in points])
    cells: dict[float, dict[str, Measured | None]] = {}
    for b in budgets:
        cells[b] = {}
        for f in r.families:
            i = best_within(points, f, b)
            cells[b][f] = None if i is None else r.configs[i]
    return budgets, cells


def _budget_wins(r: Ranked) -> dict[str, int]:
    budgets, cells = _budget_table(r)
    wins: dict[str, int] = {}
    for b in budgets:
        top = max((m.accuracy for m in cells[b].values() if m is not None), default=math.nan)
        for f, m in cells[b].items():
            if m is not None and m.accuracy == top:
                wins[f] = wins.get(f, 0) + 1
    return wins


def matched_compute(r: Ranked) -> Section:
    budgets, cells = _budget_table(r)
    rows = []
    for b in budgets:
        top = max((m.accuracy for m in cells[b].values() if m is not None), default=math.nan)
        row = [f"≤ {b:,.0f}" if b >= 1 else f"≤ {b:.3g}"]
        winners = []
        for f in r.families:
            m = cells[b][f]
            if m is None:
                row.append("—")
                continue
            knobs = f" ({m.config.params})" if m.config.params else ""
            text = f"{pct(m.accuracy)}{knobs}"
            if m.accuracy == top:
                text = f"**{text}**"
                winners.append(f)
            row.append(text)
        row.append(", ".join(f"`{w}`" for w in winners))
        rows.append(row)
    table = Table(["Budget (tokens/query)", *[f"`{f}`" for f in r.families], "Most accurate"], rows,
                  align="r" + "r" * len(r.families) + "l")
    return Section("Accuracy at matched compute", [
        "Each row is a compute budget: mean generated tokens per query, in powers of two. Each cell is the "
        "accuracy of the strategy's most accurate configuration within that budget (its knobs in brackets); "
        "the best in the row is in bold; — means none of the strategy's configurations fits the budget.",
        table,
    ])


def against_compute(r: Ranked, images: Sequence[Image]) -> Section:
    rows = []
    for i, m in enumerate(r.configs):
        rows.append([
            f"`{m.label}`", pct(m.accuracy), ci(m), num(AXIS["tokens"].value(m)), num(AXIS["gpu_seconds"].value(m)),
            num(AXIS["usd"].value(m)), human_bytes(m.mean["kv_peak_bytes"]),
            human_bytes(m.mean["kv_peak_bytes_unshared"]),
            "★" if i in r.front_tokens else "", "★" if i in r.front_gpu else "",
        ])
    table = Table(
        ["Configuration", "Accuracy", "95% CI", "Generated tokens/query", "GPU-s/query", "$ per 1k queries",
         "KV peak (shared)", "KV peak (unshared)", "Pareto: tokens", "Pareto: GPU-s"],
        rows, align="lrrrrrrrll",
    )
    blocks: list[Block] = [
        "Each plot draws accuracy against one compute measure on a log axis: a line per strategy through its "
        "configurations in order of compute, with 95% bootstrap error bars. Dashed black line and stars: the "
        "Pareto frontier on that measure. GPU-seconds and dollars include the verifier's (PRM) share. KV peak "
        "is the most KV cache a query held at once, in bytes, with shared prefixes stored once (as vLLM's "
        "prefix cache does); the unshared figure is what it would be with every branch holding its own copy.",
        *images,
        table,
    ]
    return Section("Accuracy against compute", blocks)


def frontier(r: Ranked) -> Section:
    blocks: list[Block] = [
        "The configurations no other configuration matches or beats in accuracy for less compute, cheapest "
        "first. Everything off the frontier is dominated: some configuration is at least as accurate for no "
        "more compute.",
    ]
    measures = (("tokens", r.front_tokens, "generated tokens"), ("gpu_seconds", r.front_gpu, "GPU-seconds"))
    for key, front, name in measures:
        axis = AXIS[key]
        ordered = sorted(front, key=lambda i: (axis.value(r.configs[i]), -r.configs[i].accuracy))
        rows = [[f"`{r.configs[i].label}`", num(axis.value(r.configs[i])), pct(r.configs[i].accuracy),
                 ci(r.configs[i])] for i in ordered]
        blocks += [f"**Against {name}:**", Table(
            ["Configuration", "Generated tokens/query" if key == "tokens" else "GPU-s/query", "Accuracy", "95% CI"],
            rows, align="lrrr",
        )]
    return Section("Pareto frontier", blocks)


def cost_breakdown(r: Ranked) -> Section:
    rows = []
    for m in r.configs:
        shared, unshared = m.mean["kv_peak_bytes"], m.mean["kv_peak_bytes_unshared"]
        saving = f"{100 * (1 - shared / unshared):.0f}%" if unshared > 0 else "—"
        rows.append([
            f"`{m.label}`", num(m.mean["prompt_tokens"]), num(m.mean["generated_tokens"]),
            "—" if m.cache_hit is None else pct(m.cache_hit), human_bytes(shared), human_bytes(unshared), saving,
            num(m.mean["gpu_seconds"]), num(m.mean["verifier_tokens"]), num(m.mean["verifier_gpu_seconds"]),
            num(1000 * m.mean["usd"]), num(1000 * m.mean["verifier_usd"]), num(m.mean["wall_seconds"]),
            str(m.errors),
        ])
    table = Table(
        ["Configuration", "Prompt tokens/query", "Generated tokens/query", "Cache hit", "KV peak (shared)",
         "KV peak (unshared)", "Sharing saves", "Policy GPU-s/query", "Verifier tokens/query",
         "Verifier GPU-s/query", "Policy $/1k queries", "Verifier $/1k queries", "Wall s/query", "Errors"],
        rows, align="l" + "r" * 13,
    )
    return Section("Cost breakdown", [
        "Per-query means over the queries that finished without an error (errored queries still count as "
        "wrong in accuracy). **Cache hit** is cached prompt tokens over the tokens an ideal prefix cache would "
        "have served, pooled over the queries where that ideal is above 0. **Sharing saves** is how much "
        "smaller the KV peak is because branches share their prefix. Verifier columns are the process "
        "reward model's work (0 for strategies that use none); dollars are GPU-seconds at the run's "
        "`cost.usd_per_gpu_hour`.",
        table,
    ])


def difficulty(r: Ranked) -> Section:
    per = [by_difficulty(m.config.queries) for m in r.configs]
    levels = sorted({d for p in per for d in p}, key=difficulty_key)
    if levels == [None]:
        return Section("By difficulty", [
            "The queries carry no `meta.difficulty` and the runs no `dataset.steps`: no breakdown to show.",
        ])
    best = {d: max((p[d][0] for p in per if d in p), default=math.nan) for d in levels}
    rows = []
    for m, p in zip(r.configs, per, strict=True):
        row = [f"`{m.label}`"]
        for d in levels:
            if d not in p:
                row.append("—")
                continue
            acc, n = p[d]
            text = f"{pct(acc)} ({n})"
            row.append(f"**{text}**" if acc == best[d] else text)
        rows.append(row)
    names = ["—" if d is None else str(d) for d in levels]
    return Section("By difficulty", [
        "Accuracy per difficulty level (`meta.difficulty` of each query, else the run's `dataset.steps`), "
        "with the number of queries in brackets; the best per level in bold.",
        Table(["Configuration", *names], rows, align="l" + "r" * len(levels)),
    ])


def runs(r: Ranked) -> Section:
    inputs = r.inputs
    complete = sum(len(c.runs) for c in inputs.configurations)
    blocks: list[Block] = [Bullets([
        f"{complete} complete run(s) in {len(inputs.configurations)} configuration(s).",
        f"{len(inputs.incomplete)} incomplete run(s) (no `summary.json` yet): left out of every table above.",
        f"{len(inputs.same_as)} sweep cell(s) run by another (`same_as.json`): the same configuration "
        "once the options their strategy does not take are dropped.",
        f"{len(inputs.skipped)} skipped sweep cell(s) (`skipped.json`).",
        f"{inputs.bad_lines} torn or unreadable line(s) in `results.jsonl` skipped.",
    ])]
    if inputs.incomplete:
        blocks.append(Table(
            ["Incomplete run", "Strategy", "Records so far"],
            [[f"`{shown_path(run.path)}`", f"`{run.strategy.get('name')}`", str(len(run.queries))]
             for run in inputs.incomplete],
            align="llr",
        ))
    return Section("Runs", blocks)


def document(r: Ranked, title: str, inputs: Sequence[Path], images: Sequence[Image]) -> Document:
    queries = sum(m.n for m in r.configs)
    intro: list[Block] = [
        f"Dataset `{r.inputs.dataset}` · {len(r.configs)} configurations · {queries:,} queries · from "
        + ", ".join(f"`{shown_path(p)}`" for p in inputs) + ".",
    ]
    if r.inputs.incomplete:
        intro.append(f"**{len(r.inputs.incomplete)} incomplete run(s) left out**: see *Runs* at the end.")
    top = r.families[0]
    intro.append(f"Top strategy at matched compute: `{top}` (score {pct(r.scores[top])}); "
                 f"top configuration: `{r.configs[0].label}` ({pct(r.configs[0].accuracy)} {ci(r.configs[0])}).")
    return Document(title, intro, [
        leaderboard(r), matched_compute(r), against_compute(r, images), frontier(r), cost_breakdown(r),
        difficulty(r), runs(r),
    ])


def write_report(
    inputs: Sequence[Path],
    out: Path | None = None,
    title: str | None = None,
    dataset: str | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[Path]:
    """Read the runs under ``inputs``, write the report into ``out``; return the files written."""
    inputs = [Path(p) for p in inputs]
    out = out or inputs[0] / "report"
    r = rank(load(inputs, dataset), resamples=resamples, seed=seed)
    title = title or f"Test-time compute report: {r.inputs.dataset}"
    subtitle = f"{r.inputs.dataset} · {len(r.configs)} configurations · {int(LEVEL * 100)}% bootstrap CI"
    images = [Image(a.filename, f"Accuracy vs {a.title}", plot(r.configs, a, r.families, subtitle)) for a in AXES]
    doc = document(r, title, inputs, images)
    written = [out / i.filename for i in images] + [out / "report.md", out / "report.html"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for image in images:
            (out / image.filename).write_bytes(image.png)
        (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
        (out / "report.html").write_text(to_html(doc), encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    return written
