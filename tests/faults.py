"""A replica killed mid-run, for the HTTP backend on any server (vLLM's and SGLang's tests)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from strategies import BestOfN
from tests.servers import Server
from ttc.datasets import arith_problems
from ttc.runner import read_records, run_queries
from verifiers.math import equivalent


async def grade(problem: Any, answer: Any) -> bool:
    return equivalent(problem.answer, answer.answer)


def kill_a_replica_mid_run(backend: Any, second: Server, results: Path) -> None:
    """Kill ``second`` (the backend's second endpoint) mid-run: its requests go to the first;
    then kill the run itself and rerun into the same results file: every query ends up
    recorded once, none as an error."""
    problems = arith_problems(limit=24, steps=3, seed=8)

    def run(**kw: Any) -> Any:
        return run_queries(problems, BestOfN(n=4, max_tokens=80), backend, grade, results_path=results,
                           progress=False, **kw)  # fmt: skip

    async def first_run() -> None:
        task = asyncio.create_task(run(concurrency=8))
        while len(read_records(results)) < 4 and not task.done():
            await asyncio.sleep(0.05)
        dying = backend.endpoints[1]
        assert dying.sent > 0, "the second replica took no requests before it died"
        await asyncio.to_thread(second.kill)
        # Let the requests that were in flight on the dead replica fail over first
        # (a reset connection, or at worst the timeout), so the test does not race them.
        while (len(read_records(results)) < 12 or dying.outstanding > 0) and not task.done():
            await asyncio.sleep(0.05)
        task.cancel()  # the run process dies too
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(first_run())
    first = read_records(results)
    assert 12 <= len(first) < len(problems)
    assert all(r["error"] is None for r in first), [r["error"] for r in first if r["error"]]
    assert backend.endpoints[1].errors > 0  # in-flight requests did meet the dead replica
    redone = asyncio.run(run())
    assert len(redone) == len(problems) - len(first)
    final = read_records(results)
    assert sorted(r["id"] for r in final) == sorted(p.id for p in problems)
    assert all(r["error"] is None for r in final)
