"""Every strategy end to end on the real vLLM engine with the shipped policy and PRM."""

from __future__ import annotations

import asyncio

import pytest

from strategies.beam_search import BeamSearch
from strategies.dvts import DVTS
from strategies.mcts import MCTS
from strategies.particle_filter import ParticleFilter
from strategies.verify_revise import VerifyRevise
from ttc.datasets import arith_problems
from ttc.runner import run_queries, summarize
from verifiers.math import equivalent
from verifiers.prm import PRMVerifier

pytestmark = pytest.mark.engine
PROBLEMS = arith_problems(limit=8, steps=4, seed=31)


async def grade(problem, answer) -> bool:
    return equivalent(problem.answer, answer.answer)


def solve(strategy, engine, cohorts: int = 1) -> list[dict]:
    records = asyncio.run(run_queries(PROBLEMS, strategy, engine, grade, seed=1, cohorts=cohorts, progress=False))
    assert all(r["error"] is None for r in records), [r["error"] for r in records]
    assert all(r["answer"] is not None for r in records)
    return sorted(records, key=lambda r: r["id"])


def run(strategy, engine) -> dict:
    s = summarize(solve(strategy, engine))
    assert s["verifier_tokens"] > 0 and s["verifier_gpu_seconds"] > 0  # the PRM's work, kept apart
    return s


@pytest.mark.parametrize(
    "make",
    [
        lambda prm: BeamSearch(n=8, width=4, verifier=prm),
        lambda prm: MCTS(simulations=12, branching=4, parallel=4, verifier=prm),
    ],
    ids=["beam_search", "mcts"],
)
def test_tree_search_hits_the_prefix_cache_as_an_ideal_cache_would(make, policy_engine, prm_engine) -> None:
    s = run(make(PRMVerifier(prm_engine)), policy_engine)
    assert s["ideal_cached_tokens"] > 0
    assert s["cached_tokens"] >= 0.95 * s["ideal_cached_tokens"], s
    assert s["ideal_cached_tokens_token"] >= s["ideal_cached_tokens"]
    assert s["kv_peak_tokens"] < s["kv_peak_tokens_unshared"]  # siblings share their parent's KV


@pytest.mark.parametrize(
    "make",
    [
        lambda prm: DVTS(n=8, width=4, verifier=prm),
        lambda prm: ParticleFilter(n=8, verifier=prm),
        lambda prm: VerifyRevise(rounds=2, verifier=prm),
    ],
    ids=["dvts", "particle_filter", "verify_revise"],
)
def test_strategy_runs_end_to_end(make, policy_engine, prm_engine) -> None:
    strategy = make(PRMVerifier(prm_engine))
    s = run(strategy, policy_engine)
    assert s["accuracy"] > 0
    if not isinstance(strategy, VerifyRevise):  # a chain's revision is a batch of its own: nothing to share
        assert s["kv_peak_tokens"] < s["kv_peak_tokens_unshared"]  # siblings share their parent's KV


def test_a_batch_cap_splits_the_batches_and_changes_no_answer(policy_engine, prm_engine) -> None:
    """``max_batch`` splits lockstep queries into cohorts (one generates while the other is judged);
    every branch carries its own seed, so how requests are grouped into batches changes no sample."""
    uncapped = solve(BeamSearch(n=8, width=4, verifier=PRMVerifier(prm_engine)), policy_engine)
    sizes: list[int] = []
    batchers = [policy_engine._batcher, prm_engine._batcher]
    inner = [b._run_batch for b in batchers]

    def recording(run):
        def wrapped(jobs, batch_id):
            sizes.append(len(jobs))
            return run(jobs, batch_id)

        return wrapped

    try:
        for b, run_batch in zip(batchers, inner, strict=True):
            b.max_batch, b._run_batch = 16, recording(run_batch)
        capped = solve(BeamSearch(n=8, width=4, verifier=PRMVerifier(prm_engine)), policy_engine)
    finally:
        for b, run_batch in zip(batchers, inner, strict=True):
            b.max_batch, b._run_batch = None, run_batch
    assert sizes and max(sizes) <= 16
    assert sizes.count(16) >= 2  # a PRM step of 8 queries x 8 beams is 64 judgements: cut into four
    s = summarize(capped)
    assert s["cached_tokens"] >= 0.95 * s["ideal_cached_tokens"], s
    assert [(r["id"], r["completion"]) for r in capped] == [(r["id"], r["completion"]) for r in uncapped]


def test_two_cohorts_keep_the_batches_apart_and_change_no_answer(policy_engine, prm_engine) -> None:
    mcts = MCTS(simulations=12, branching=4, parallel=4, verifier=PRMVerifier(prm_engine))
    one = solve(mcts, policy_engine)
    batches: list[set[str]] = []
    run_batch = policy_engine._batcher._run_batch

    def recording(jobs, batch_id):
        texts = policy_engine.tokenizer.batch_decode([ids for ids, _ in jobs], skip_special_tokens=True)
        batches.append({t.split("=?")[0] for t in texts})
        return run_batch(jobs, batch_id)

    policy_engine._batcher._run_batch = recording
    try:
        two = solve(mcts, policy_engine, cohorts=2)
    finally:
        policy_engine._batcher._run_batch = run_batch
    cohort = {p.prompt.split("=?")[0]: i % 2 for i, p in enumerate(PROBLEMS)}
    assert all(len({cohort[q] for q in b}) == 1 for b in batches), batches
    assert {cohort[q] for b in batches for q in b} == {0, 1}
    same = [(r["id"], r["answer"], r["completion"]) for r in one]
    assert [(r["id"], r["answer"], r["completion"]) for r in two] == same


def test_mcts_priors_are_the_policys_step_probabilities(policy_engine, prm_engine) -> None:
    from ttc.context import QueryContext

    mcts = MCTS(simulations=4, branching=4, parallel=4, verifier=PRMVerifier(prm_engine))
    tree, _ = asyncio.run(mcts.search(QueryContext(PROBLEMS[0], policy_engine, seed=3)))
    kids, stack = [], [tree]
    while stack:
        node = stack.pop()
        kids += node.children
        stack += node.children
    priors = [kid.logprob for kid in kids]
    # vLLM reports a step's log-probability only when asked; unasked, every prior was 0
    assert len(priors) > 4 and all(p < 0 for p in priors) and len(set(priors)) > 1, priors
