"""Find run directories, read them, and pool their queries into labelled configurations.

A run directory holds ``config.yaml``; it is complete once ``summary.json`` exists
(``ttc.run`` writes it last). Runs that differ only in what they were run on (the
dataset's difficulty knob, the dataset sample, the seed) or in how they were driven
(concurrency, progress bar) are one configuration: their queries are pooled, so
``dataset.steps=2,4,8`` sweeps feed the per-difficulty table. Any other setting that
differs (the verifier's aggregation, a backend option, ...) makes a configuration of its own.
A sweep cell that another cell ran for it (``same_as.json``: the options it does not take
dropped, the two are alike) is counted, not read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Per-query ledger figures read from results.jsonl; a missing or non-numeric one reads as 0.
FIGURES = (
    "prompt_tokens", "generated_tokens", "cached_tokens", "ideal_cached_tokens", "kv_peak_tokens",
    "kv_peak_bytes", "kv_peak_bytes_unshared", "gpu_seconds", "usd", "verifier_tokens",
    "verifier_gpu_seconds", "verifier_usd", "wall_seconds",
)
# Strategy knobs always in a label; any other strategy key shows only where it varies.
ALWAYS_SHOWN = ("n", "width", "simulations", "branching")
SHORT_NAMES = {"simulations": "sims", "branching": "k"}
# Settings pooled over: which problems were posed and how the run was driven, not what answered them.
POOLED = frozenset({"seed", "concurrency", "cohorts", "progress", "hydra"})
# dataset.name is one per report (``load``); the rest pick the sample or its difficulty. Keys that
# change how a problem is posed (arith's ``direct``, mbpp's ``n_visible``) stay apart.
POOLED_DATASET = frozenset({"name", "steps", "limit", "seed", "shuffle", "path", "split", "max_operand", "max_const"})
# Dataset keys that choose which problems a run poses, not what a problem is: a query is the same query
# under any of their values.
SAMPLE_ONLY = frozenset({"limit", "shuffle"})
# Any other setting outside the strategy changes what is measured; where it varies it joins the
# label, these sections' keys first and each section's name before its options.
SECTION_ORDER = ("model", "verifier", "backend")


class ReportError(Exception):
    """Bad input. The CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class Query:
    id: str
    correct: bool
    error: str | None
    difficulty: int | float | str | None
    figures: dict[str, float]


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    queries: list[Query]
    complete: bool
    bad_lines: int = 0  # torn or garbled lines in results.jsonl, skipped

    @property
    def strategy(self) -> dict[str, Any]:
        return self.config.get("strategy") or {}

    @property
    def dataset(self) -> str:
        return str((self.config.get("dataset") or {}).get("name", "?"))


@dataclass
class Configuration:
    label: str  # e.g. "beam_search(n=16, width=4)"
    family: str  # the strategy it belongs to: one plot line, one row of the strategy leaderboard
    params: str  # the label's knobs alone, for plot annotations
    runs: list[Path] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)


@dataclass
class Inputs:
    configurations: list[Configuration]
    incomplete: list[Run]
    skipped: list[Path]
    dataset: str
    bad_lines: int
    same_as: list[Path] = field(default_factory=list)  # sweep cells that another cell ran for


def load(paths: Iterable[Path], dataset: str | None = None) -> Inputs:
    """Everything the report needs from ``paths`` (sweep or run directories)."""
    paths = list(paths)
    complete, incomplete, skipped, same_as = [], [], [], []
    for run_dir in discover(paths):
        if not (run_dir / "results.jsonl").exists():
            if (run_dir / "same_as.json").exists():
                same_as.append(run_dir)
                continue
            if (run_dir / "skipped.json").exists():  # written by earlier versions of ttc.run
                skipped.append(run_dir)
                continue
        run = read_run(run_dir)
        (complete if run.complete else incomplete).append(run)
    datasets = sorted({r.dataset for r in complete + incomplete})
    if dataset is not None:
        complete = [r for r in complete if r.dataset == dataset]
        incomplete = [r for r in incomplete if r.dataset == dataset]
        if not complete:
            found = ", ".join(datasets) or "none"
            raise ReportError(f"no complete runs of dataset {dataset!r} (datasets found: {found})")
    where = ", ".join(str(p) for p in paths)
    if not complete:
        if incomplete:
            raise ReportError(f"no complete runs under {where}: {len(incomplete)} incomplete (no summary.json yet)")
        raise ReportError(f"no runs (directories with config.yaml and results.jsonl) under {where}")
    names = sorted({r.dataset for r in complete})
    if len(names) > 1:
        raise ReportError(f"runs span several datasets ({', '.join(names)}): pick one with --dataset NAME")
    configurations = group(complete)
    if not configurations:
        raise ReportError(f"complete runs under {where} have no records (results.jsonl empty or unreadable)")
    return Inputs(
        configurations=configurations,
        incomplete=incomplete,
        skipped=skipped,
        dataset=names[0],
        bad_lines=sum(r.bad_lines for r in complete),
        same_as=same_as,
    )


def discover(paths: Iterable[Path]) -> list[Path]:
    """Run directories under ``paths``, each once, in a stable order."""
    found: dict[Path, None] = {}  # insertion-ordered set
    for path in paths:
        if path.is_file() and path.name in ("config.yaml", "results.jsonl", "summary.json"):
            path = path.parent
        if not path.exists():
            raise ReportError(f"{path}: no such directory")
        if not path.is_dir():
            raise ReportError(f"{path}: not a directory")
        for root, dirs, files in os.walk(path, onerror=_walk_error):
            # Hydra keeps its own config.yaml in .hydra/: not a run
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if {"config.yaml", "skipped.json", "same_as.json"} & set(files):
                found.setdefault(Path(root).resolve(), None)
    return list(found)


def _walk_error(exc: OSError) -> None:
    raise ReportError(f"{exc.filename}: unreadable ({exc.strerror or exc})")


def read_run(run_dir: Path) -> Run:
    config = _read_yaml(run_dir / "config.yaml")
    strategy = config.get("strategy")
    if not isinstance(strategy, dict) or "name" not in strategy:
        raise ReportError(f"{run_dir / 'config.yaml'}: no strategy.name")
    summary = run_dir / "summary.json"
    complete = summary.exists()
    if complete:
        _read_json(summary)  # only its presence matters, but a garbled one means a damaged run
    records, bad = _read_jsonl(run_dir / "results.jsonl")
    steps = (config.get("dataset") or {}).get("steps")
    chosen: dict[str, Query] = {}
    for rec in records:
        query = _query(rec, steps)
        if query is None:
            bad += 1
            continue
        # A resumed run retries its errored queries and appends the retry, so one id can hold an
        # error and then a success: keep the first success, else the first error, as
        # ttc.runner.read_records (and so summary.json) does.
        seen = chosen.get(query.id)
        if seen is None or (seen.error is not None and query.error is None):
            chosen[query.id] = query
    return Run(path=run_dir, config=config, queries=list(chosen.values()), complete=complete, bad_lines=bad)


def _query(rec: dict[str, Any], steps: Any) -> Query | None:
    """The record as a query; None when a figure is NaN or infinite, which no finished query measures."""
    figures = {k: _number(rec.get(k)) for k in FIGURES}
    if not all(math.isfinite(v) for v in figures.values()):
        return None
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    difficulty = meta.get("difficulty", steps)
    if not isinstance(difficulty, int | float | str):
        difficulty = None if difficulty is None else json.dumps(difficulty)
    error = rec.get("error")
    return Query(
        id=str(rec.get("id")),
        correct=rec.get("correct") is True,
        error=None if error is None else str(error),
        difficulty=difficulty,
        figures=figures,
    )


def _number(value: Any) -> float:
    """A figure as a float: 0 when absent or not a number; inf when too large for one (JSON allows that)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return math.inf


def _read_text(path: Path, errors: str = "strict") -> str:
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: unreadable ({getattr(exc, 'strerror', None) or exc})") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a mapping")
    return data


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records and the count of lines skipped: a killed run leaves a torn last line."""
    if not path.exists():
        return [], 0
    records, bad = [], 0
    # A line torn inside a multi-byte character must not sink the whole file
    for line in _read_text(path, errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def group(runs: list[Run]) -> list[Configuration]:
    """Pool runs with the same settings, bar the pooled ones, into configurations."""
    varying = _varying_strategy_keys(runs)
    settings = [_settings(run) for run in runs]
    keys = sorted(set().union(*settings))
    extras = _distinguishing_keys(runs, settings)
    configs: dict[str, Configuration] = {}
    seen: dict[str, set[tuple[str, Any, str]]] = {}
    for run, mine in zip(runs, settings, strict=True):
        identity = _key([run.strategy, [mine.get(k) for k in keys]])
        if identity not in configs:
            configs[identity] = _configuration(run, mine, varying, extras)
            seen[identity] = set()
        config = configs[identity]
        config.runs.append(run.path)
        # The same sweep passed twice, a copy of a run, or a run and its shorter trial (dataset.limit=3,
        # then 100) must not count a query twice: the limit and the order pick problems, not change them.
        dataset = run.config.get("dataset")
        where = _key({k: v for k, v in dataset.items() if k not in SAMPLE_ONLY} if isinstance(dataset, dict)
                     else dataset)
        for q in run.queries:
            key = (where, run.config.get("seed"), q.id)
            if key not in seen[identity]:
                seen[identity].add(key)
                config.queries.append(q)
    return [c for c in configs.values() if c.queries]


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _settings(run: Run) -> dict[str, Any]:
    """The run's config outside the strategy and the pooled keys, as dotted keys to leaf values."""
    flat: dict[str, Any] = {}
    for key, value in run.config.items():
        if key == "strategy" or key in POOLED:
            continue
        if key == "dataset" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in POOLED_DATASET}
        _flatten(str(key), value, flat)
    return flat


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, out)
    else:
        out[prefix] = value


def _distinguishing_keys(runs: list[Run], settings: list[dict[str, Any]]) -> list[str]:
    """The settings the labels show: enough to tell every two configurations apart, and no more.

    A sweep over ``model=a,b`` changes the model's path, dtype, context length... along with its
    name; the name alone tells them apart, so the labels show only ``model=...``."""
    keys = set().union(*settings)
    varying = [k for k in keys if len({_key(s.get(k)) for s in settings}) > 1]

    def classes(shown: list[str]) -> int:
        return len({_key([r.strategy, [s.get(k) for k in shown]]) for r, s in zip(runs, settings, strict=True)})

    shown: list[str] = []
    count = classes(shown)
    for key in sorted(varying, key=_priority):
        # A key that splits no class so far is implied by the keys already shown
        if (more := classes([*shown, key])) > count:
            shown.append(key)
            count = more
    return shown


def _priority(key: str) -> tuple[int, str, bool, str]:
    section, _, rest = key.partition(".")
    rank = SECTION_ORDER.index(section) if section in SECTION_ORDER else len(SECTION_ORDER)
    return rank, section, rest != "name", rest


def _shown(key: str, settings: dict[str, Any]) -> str:
    # A section's name stands for the section, as on the command line: verifier=prm
    name = key.removesuffix(".name") if key.count(".") == 1 else key
    return f"{name}={_fmt(settings[key]) if key in settings else '?'}"


def _varying_strategy_keys(runs: list[Run]) -> dict[str, set[str]]:
    """Per strategy name, the keys whose value differs between its runs (a missing key counts as null)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run.strategy["name"], []).append(run.strategy)
    varying = {}
    for name, strategies in by_name.items():
        keys = set().union(*strategies) - {"name"}
        varying[name] = {
            k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in strategies}) > 1
        }
    return varying


def _configuration(
    run: Run, settings: dict[str, Any], varying: dict[str, set[str]], extras: list[str]
) -> Configuration:
    strategy = run.strategy
    name = str(strategy["name"])
    shown = [k for k in ALWAYS_SHOWN if k in strategy]
    rest = varying.get(name, set()) - set(shown)
    # select first: it changes what a knob means more than the sampling settings do
    shown += sorted(rest, key=lambda k: (k != "select", k))
    params = ", ".join(f"{SHORT_NAMES.get(k, k)}={_fmt(strategy.get(k))}" for k in shown)
    suffix = ", ".join(_shown(key, settings) for key in extras)
    family = f"{name} [{suffix}]" if suffix else name
    label = f"{name}({params})" if params else name
    return Configuration(label=f"{label} [{suffix}]" if suffix else label, family=family, params=params)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, default=str)
