import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from ttc.backends.base import BackendError, EngineUnavailable
from ttc.backends.batching import COHORT, MicroBatcher, OnItsOwn


async def test_concurrent_submissions_meet_in_one_batch() -> None:
    batches: list[list[int]] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        batches.append(list(jobs))
        return [j * 10 for j in jobs]

    b: MicroBatcher[int, int] = MicroBatcher(run)
    results = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(8)))
    assert results[3] == [30, 1030]
    assert len(batches) == 1 and len(batches[0]) == 16


async def test_a_request_a_few_loop_turns_behind_still_meets_the_batch() -> None:
    """The batcher holds the engine until the loop goes quiet, not only for what was ready at
    once: a branch whose request comes through a gather or two still joins the batch."""
    batches: list[list[int]] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        batches.append(list(jobs))
        return list(jobs)

    b: MicroBatcher[int, int] = MicroBatcher(run)

    async def after(turns: int, job: int) -> list[int]:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await b.submit([job])

    assert await asyncio.gather(after(0, 1), after(2, 2)) == [[1], [2]]
    assert batches == [[1, 2]]


async def test_a_failing_job_fails_alone() -> None:
    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        if any(j < 0 for j in jobs):
            raise ValueError("negative")
        return list(jobs)

    b: MicroBatcher[int, int] = MicroBatcher(run)
    ok, bad = await asyncio.gather(b.submit([1, 2]), b.submit([-1]), return_exceptions=True)
    assert ok == [1, 2]
    assert isinstance(bad, ValueError)


async def test_an_unavailable_engine_fails_the_batch_without_rerunning_it_job_by_job() -> None:
    calls: list[list[int]] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        calls.append(list(jobs))
        raise EngineUnavailable("every replica is down")

    b: MicroBatcher[int, int] = MicroBatcher(run)
    outs = await asyncio.gather(b.submit([1, 2]), b.submit([3]), return_exceptions=True)
    assert all(isinstance(o, EngineUnavailable) for o in outs)
    assert calls == [[1, 2, 3]]  # one attempt; retries are the engine's business


async def test_on_its_own_runs_each_call_as_its_own_batch() -> None:
    batches: list[tuple[list[int], int]] = []

    async def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        batches.append((list(jobs), batch_id))
        return [j + 1 for j in jobs]

    b: OnItsOwn[int, int] = OnItsOwn(run)
    assert await asyncio.gather(b.submit([1, 2]), b.submit([3])) == [[2, 3], [4]]
    assert sorted(batches) == [([1, 2], 1), ([3], 2)]


async def test_followup_requests_form_the_next_batch() -> None:
    sizes: list[int] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        sizes.append(len(jobs))
        return list(jobs)

    b: MicroBatcher[int, int] = MicroBatcher(run)

    async def chain(i: int) -> None:
        for step in range(3):
            await b.submit([i * 10 + step])

    await asyncio.gather(*(chain(i) for i in range(5)))
    assert sizes == [5, 5, 5]


def test_batch_ids_are_distinct() -> None:
    ids: list[int] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        ids.append(batch_id)
        return list(jobs)

    b: MicroBatcher[int, int] = MicroBatcher(run)

    async def go() -> None:
        await b.submit([1])
        await b.submit([2])

    asyncio.run(go())
    assert len(set(ids)) == 2
    with pytest.raises(TypeError):
        asyncio.run(b.submit(None))  # type: ignore[arg-type]


async def test_max_batch_caps_batches_and_keeps_every_result_with_its_job() -> None:
    batches: list[list[int]] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        batches.append(list(jobs))
        return [j * 10 for j in jobs]

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch=5)
    results = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(8)))
    assert results == [[i * 10, (i + 100) * 10] for i in range(8)]
    assert [len(x) for x in batches] == [5, 5, 5, 1]


async def lockstep_overlap(cap: int | None = None, cohorts: int = 1) -> float:
    """Seconds two stand-in engines (10 ms a batch) are busy at once while 8 queries, dealt
    into ``cohorts``, each generate and then are judged, 4 times over; no batch may mix cohorts."""
    busy: dict[str, list[tuple[float, float]]] = {"gen": [], "judge": []}
    loop = asyncio.get_running_loop()

    def engine(name: str) -> Callable[[Sequence[int], int], Awaitable[list[int]]]:
        async def run(jobs: Sequence[int], batch_id: int) -> list[int]:
            assert len({j % cohorts for j in jobs}) == 1  # never two cohorts in one batch
            start = loop.time()
            await asyncio.sleep(0.01)
            busy[name].append((start, loop.time()))
            return list(jobs)

        return run

    gen, judge = MicroBatcher(engine("gen"), max_batch=cap), MicroBatcher(engine("judge"), max_batch=cap)

    async def query(i: int) -> None:
        COHORT.set(i % cohorts)
        for _ in range(4):
            await gen.submit([i])
            await judge.submit([i])

    await asyncio.gather(*(query(i) for i in range(8)))
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in busy["gen"] for b0, b1 in busy["judge"])


async def test_max_batch_lets_two_engines_work_at_once() -> None:
    """With batches capped at half the queries, one cohort is judged while the other
    generates; uncapped, the engines take turns."""
    assert await lockstep_overlap() == 0.0
    assert await lockstep_overlap(cap=4) > 0.02


async def test_a_batch_takes_one_cohort_the_longest_waiting_first() -> None:
    batches: list[list[int]] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        batches.append(list(jobs))
        return list(jobs)

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch=3)

    async def query(i: int) -> list[int]:
        COHORT.set(i % 2)
        return await b.submit([i])

    assert await asyncio.gather(*(query(i) for i in [1, 0, 2, 3, 4, 6])) == [[i] for i in [1, 0, 2, 3, 4, 6]]
    assert batches == [[1, 3], [0, 2, 4], [6]]  # cohort 1 was first to wait; the cap still holds


async def test_cohorts_let_two_engines_work_at_once_without_a_cap() -> None:
    assert await lockstep_overlap(cohorts=2) > 0.02


@pytest.mark.parametrize("cohorts", [1, 2, 3])
def test_run_queries_deals_queries_into_cohorts_that_batches_never_mix(cohorts: int) -> None:
    from strategies.cot import CoT
    from tests.fakes import ScriptedBackend
    from ttc.datasets import arith_problems
    from ttc.runner import run_queries

    async def grade(problem: object, answer: object) -> bool:
        return False

    problems = arith_problems(limit=7, steps=2, seed=5)
    backend = ScriptedBackend()
    records = asyncio.run(run_queries(problems, CoT(), backend, grade, cohorts=cohorts, progress=False))
    assert all(r["error"] is None for r in records)
    cohort_of = {tuple(backend.encode(p.prompt)): i % cohorts for i, p in enumerate(problems)}
    seen = [{cohort_of[tuple(backend.encode(r.prompt))] for r in batch} for batch in backend.calls]
    assert seen == [{c} for c in range(cohorts)]  # one batch per cohort, the first-dealt first


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda jobs, i: list(jobs), max_batch=0)


async def test_a_batch_function_with_too_few_results_fails_its_callers_instead_of_hanging() -> None:
    def short(jobs: Sequence[int], batch_id: int) -> list[int]:
        return list(jobs)[:-1]

    b: MicroBatcher[int, int] = MicroBatcher(short)
    outs = await asyncio.wait_for(asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True), timeout=5)
    assert all(isinstance(o, BackendError) for o in outs), outs
    assert "short" in str(outs[0]) and "0 results for 1 jobs" in str(outs[0])


async def test_a_drainer_that_dies_leaves_no_caller_waiting() -> None:
    started = asyncio.Event()

    async def slow(jobs: Sequence[int], batch_id: int) -> list[int]:
        started.set()
        await asyncio.sleep(60)
        return list(jobs)

    b: MicroBatcher[int, int] = MicroBatcher(slow)
    call = asyncio.ensure_future(b.submit([1]))
    await asyncio.wait_for(started.wait(), timeout=5)
    later = asyncio.ensure_future(b.submit([2]))  # waiting for the next batch when the drainer dies
    await asyncio.sleep(0)
    assert b._drainer is not None
    b._drainer.cancel()
    done, _ = await asyncio.wait([call, later], timeout=5)
    assert done == {call, later} and all(t.cancelled() for t in done)
