"""Run a strategy over many queries at once, grade them, and record what each cost.

Up to ``concurrency`` queries are in flight; their engine requests meet in the
backend's batches. Records are appended and flushed per query, so a killed run
loses nothing finished, and a rerun skips the queries already recorded. An engine
that dies (``EngineDied``) stops the run: the queries it cut short are not recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm import tqdm

from ttc.backends.base import Backend
from ttc.backends.batching import COHORT, EngineDied
from ttc.context import QueryContext
from ttc.ledger import Ledger
from ttc.types import KVGeometry, Problem

Grader = Callable[[Problem, Any], Awaitable[bool]]
SUMMED = (
    "prompt_tokens", "generated_tokens", "cached_tokens", "ideal_cached_tokens", "ideal_cached_tokens_token",
    "computed_prefill_tokens", "kv_peak_tokens", "kv_peak_tokens_unshared", "kv_peak_bytes",
    "kv_peak_bytes_unshared", "gpu_seconds", "usd", "verifier_tokens", "verifier_gpu_seconds", "verifier_usd",
    "wall_seconds",
)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a (possibly killed) run, one per query: its first success, else its
    first error (a rerun retries errored queries); a torn last line is ignored."""
    if not path.exists():
        return []
    records: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "id" not in rec:  # not a record of ours: a hand-edited file
            continue
        seen = records.get(rec["id"])
        if seen is None or (seen.get("error") is not None and rec.get("error") is None):
            records[rec["id"]] = rec
    return list(records.values())


def drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line (the run was killed mid-write) so appends start clean."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r.get("error") is None]
    summary: dict[str, Any] = {
        "n_queries": len(records),
        "errors": len(records) - len(ok),
        "accuracy": sum(bool(r.get("correct")) for r in records) / max(1, len(records)),
    }
    for key in SUMMED:
        summary[key] = mean(r.get(key, 0) for r in ok) if ok else 0.0
    return summary


async def run_queries(
    problems: list[Problem],
    strategy: Any,
    backend: Backend,
    grade: Grader,
    *,
    results_path: Path | None = None,
    concurrency: int = 64,
    cohorts: int = 1,
    seed: int = 0,
    format_prompt: Callable[[Problem], str] = lambda p: p.prompt,
    step_delimiter: str = "\n",
    usd_per_gpu_hour: float = 0.0,
    verifier_kv: KVGeometry | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Solve, grade and record every problem not already in ``results_path``.

    ``cohorts``: the queries are dealt into this many groups and an engine batch takes
    one group's requests only (``MicroBatcher``), so that with two, a policy generates for
    one group while its reward model judges the other."""
    if results_path:
        drop_torn_tail(results_path)
    done = {r["id"] for r in read_records(results_path) if r.get("error") is None} if results_path else set()
    todo = [p for p in problems if p.id not in done]
    sem = asyncio.Semaphore(max(1, concurrency))
    records: list[dict[str, Any]] = []
    sink = results_path.open("a") if results_path else None
    bar = tqdm(total=len(todo), desc="queries", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    tokens = [0]

    async def one(problem: Problem, cohort: int) -> None:
        COHORT.set(cohort)  # this query's task only: its requests carry its cohort
        async with sem:
            t0 = time.perf_counter()
            ledger = Ledger(backend.kv, backend.block_size, verifier_kv)
            record: dict[str, Any] = {"id": problem.id, "gold": problem.answer, "meta": problem.meta}
            try:
                ctx = QueryContext(
                    problem, backend, prompt=format_prompt(problem), seed=seed,
                    step_delimiter=step_delimiter, ledger=ledger,
                )
                answer = await strategy.solve(ctx)
                record.update(
                    answer=answer.answer,
                    correct=await grade(problem, answer),
                    error=None,
                    completion=answer.completion,
                    trace={"candidates": [c.model_dump() for c in answer.candidates], "events": ctx.trace},
                )
            except EngineDied:
                raise  # not this query's failure: it is left unrecorded, for a rerun to solve
            except Exception as exc:
                record.update(answer=None, correct=False, error=f"{type(exc).__name__}: {exc}")
            record.update(ledger.summary(usd_per_gpu_hour), wall_seconds=time.perf_counter() - t0)
            records.append(record)
            if sink:  # a dataset's own metadata may hold what JSON cannot: written as text
                sink.write(json.dumps(record, default=str) + "\n")
                sink.flush()
            tokens[0] += record["generated_tokens"]
            bar.update(1)
            bar.set_postfix(
                acc=f"{sum(bool(r['correct']) for r in records) / len(records):.3f}",
                tok_s=f"{tokens[0] / (time.perf_counter() - started):.0f}",
                errors=sum(r["error"] is not None for r in records),
            )

    tasks = [asyncio.ensure_future(one(p, i % max(1, cohorts))) for i, p in enumerate(todo)]

    def stop_all_if_engine_died(task: asyncio.Future[None]) -> None:
        # With its engine gone no query can finish: the run stops now, its records so far kept.
        if not task.cancelled() and isinstance(task.exception(), EngineDied):
            for other in tasks:
                other.cancel()

    for task in tasks:
        task.add_done_callback(stop_all_if_engine_died)
    try:
        # Every query finishes and is written before a failure of one (outside its own
        # try: the bookkeeping) is raised: the sink closes only once all are done. An engine's
        # death ends them all at once instead, none of them written.
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        bar.close()
        if sink:
            sink.close()
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:  # the engine's death before the cancellations it caused
        raise next((f for f in failures if isinstance(f, EngineDied)), failures[0])
    return records
