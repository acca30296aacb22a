"""Strategy logic on the deterministic stand-in engine (tests/fakes.py)."""

import asyncio
import inspect
from pathlib import Path

import pytest
import yaml

from strategies import BestOfN, CoT
from strategies.base import Candidate, best_scored, majority, weighted
from strategies.beam_search import BeamSearch
from strategies.dvts import DVTS
from strategies.mcts import MCTS
from strategies.particle_filter import ParticleFilter
from strategies.tree import Node
from strategies.verify_revise import VerifyRevise
from tests.fakes import ScriptedBackend
from ttc.context import QueryContext
from ttc.datasets import arith_problems
from ttc.registry import INJECTED, STRATEGIES, resolve
from ttc.runner import run_queries, summarize
from verifiers.math import equivalent
from verifiers.prm import PRMVerifier

PROBLEMS = arith_problems(limit=24, steps=4, seed=7)
CONFIGS = Path(__file__).parent.parent / "configs" / "strategy"


async def grade(problem, answer) -> bool:
    return equivalent(problem.answer, answer.answer)


def accuracy(strategy, backend: ScriptedBackend, problems=PROBLEMS, seed: int = 0) -> float:
    records = asyncio.run(run_queries(problems, strategy, backend, grade, seed=seed, progress=False))
    assert all(r["error"] is None for r in records), [r["error"] for r in records]
    return summarize(records)["accuracy"]


def cands_of(pairs: list[tuple[str | None, float | None]]) -> list[Candidate]:
    return [Candidate(completion=f"c{i}", answer=a, score=s) for i, (a, s) in enumerate(pairs)]


def test_selection_rules() -> None:
    cands = cands_of([("1", 0.1), ("2", 0.9), ("1", 0.2), (None, 5)])
    assert majority(cands).answer == "1"
    assert weighted(cands).answer == "2"
    # Unanswered candidates never win a vote, however many they are.
    assert majority(cands_of([(None, None), (None, None), ("3", None)])).answer == "3"
    assert weighted(cands_of([(None, 9.0), ("3", 0.1)])).answer == "3"
    # A tie goes to the answer seen first; the weighted winner is its best-scored candidate.
    assert majority(cands_of([("2", None), ("1", None), ("1", None), ("2", None)])).completion == "c0"
    assert weighted(cands_of([("4", 0.2), ("5", 0.5), ("4", 0.4)])).completion == "c2"
    # An unscored candidate never beats a scored one, even one scored below zero.
    assert best_scored(cands_of([("1", None), ("2", -1.0), ("3", None)])).completion == "c1"


def test_cot_answers_from_one_chain() -> None:
    b = ScriptedBackend(p_correct=1.0)
    assert accuracy(CoT(), b) == 1.0
    assert len(b.calls) == 1 and all(r.n == 1 for r in b.calls[0])


def test_best_of_n_majority_beats_one_chain() -> None:
    b = ScriptedBackend(p_correct=0.75)
    one, vote = accuracy(CoT(), b), accuracy(BestOfN(n=16), b)
    assert vote >= one + 0.2


def test_best_of_n_needs_a_verifier_to_select_by_score() -> None:
    with pytest.raises(ValueError, match="needs a verifier"):
        BestOfN(select="verifier")


@pytest.mark.parametrize("select", ["verifier", "weighted"])
def test_prm_weighted_best_of_n_uses_verifier_scores(select: str) -> None:
    b = ScriptedBackend(p_correct=0.6)
    strategy = BestOfN(n=8, select=select, verifier=PRMVerifier(b))
    records = asyncio.run(run_queries(PROBLEMS, strategy, b, grade, progress=False))
    overruled = 0  # queries where the scores chose other than the vote would have
    for r in records:
        cands = [Candidate(**c) for c in r["trace"]["candidates"]]
        # The stand-in PRM: 0.9 for a chain whose every step is right, else 0.1 (min over steps).
        assert len(cands) == 8 and all(c.score in (pytest.approx(0.9), pytest.approx(0.1)) for c in cands), cands
        if select == "verifier":  # the chosen chain is a best-scored one
            assert next(c.score for c in cands if c.completion == r["completion"]) == max(c.score for c in cands)
        else:  # the chosen answer has the highest summed score
            totals = {a: sum(c.score for c in cands if c.answer == a) for a in {c.answer for c in cands} - {None}}
            assert totals[r["answer"]] == pytest.approx(max(totals.values()))
        overruled += r["answer"] != majority(cands).answer
    assert overruled > 0
    assert summarize(records)["accuracy"] >= accuracy(BestOfN(n=8), ScriptedBackend(p_correct=0.6))


def test_all_queries_share_engine_batches() -> None:
    b = ScriptedBackend(p_correct=0.7)
    accuracy(BestOfN(n=4), b)
    assert len(b.calls) == 1 and len(b.calls[0]) == len(PROBLEMS)


def test_beam_search_keeps_n_over_m_survivors_and_beats_sampling() -> None:
    b = ScriptedBackend(p_correct=0.5)
    prm = PRMVerifier(b)
    beam = BeamSearch(n=8, width=4, verifier=prm)
    acc = accuracy(beam, b)
    assert acc >= accuracy(BestOfN(n=8), ScriptedBackend(p_correct=0.5)) + 0.2
    # after the root's N first steps, each call expands N/M survivors with n=M: every query's
    # two beams at first (no chain ends before its answer line here), never more
    assert [r.n for r in b.calls[0]] == [8] * len(PROBLEMS)
    later = [r for call in b.calls[1:] for r in call]
    assert later and all(r.n == 4 for r in later)
    assert len(b.calls[1]) == 2 * len(PROBLEMS) and all(len(call) <= 2 * len(PROBLEMS) for call in b.calls[1:])


@pytest.mark.parametrize(
    "make", [lambda v: BeamSearch(n=8, width=4, verifier=v), lambda v: DVTS(n=8, width=4, verifier=v)]
)
def test_a_chain_that_ends_early_with_a_bad_answer_closes_no_beam(make) -> None:
    # A quarter of the steps are a wrong answer that ends the chain: the PRM scores it low,
    # so the beams go on with their best open chains (a beam whose best candidate had
    # finished would close; one whose any candidate had, closed at once: 0.17 and 0.0).
    b = ScriptedBackend(p_correct=0.5, p_early=0.25)
    assert accuracy(make(PRMVerifier(b)), b) >= 0.6


def test_beam_search_lookahead_judges_each_open_candidate_after_a_greedy_step() -> None:
    b = ScriptedBackend(p_correct=0.5)
    depths: list[list[int]] = []

    class Recording(PRMVerifier):
        async def score_partials(self, problem, partials, ctx=None):  # type: ignore[no-untyped-def]
            depths.append([len(steps) for steps in partials])
            return await super().score_partials(problem, partials, ctx)

    asyncio.run(BeamSearch(n=4, width=2, lookahead=1, verifier=Recording(b)).search(QueryContext(PROBLEMS[0], b)))
    # The root's 4 first steps are judged each one greedy step further on (none has ended yet).
    assert [r.n for r in b.calls[0]] == [4] and depths[0] == [2, 2, 2, 2]
    assert [(r.n, r.temperature) for r in b.calls[1]] == [(1, 0.0)] * 4


def test_beam_search_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match="multiple of width"):
        BeamSearch(n=6, width=4)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: MCTS(simulations=0), "mcts.simulations"),
        (lambda: MCTS(c_explore=-1.0), "mcts.c_explore"),
        (lambda: BestOfN(n=0), "best_of_n.n"),
        (lambda: CoT(top_p=0.0), "cot.top_p"),
        (lambda: CoT(temperature=-0.5), "cot.temperature"),
        (lambda: ParticleFilter(resample_temperature=0.0), "particle_filter.resample_temperature"),
        (lambda: VerifyRevise(rounds=0), "verify_revise.rounds"),
        (lambda: BeamSearch(lookahead=-1), "beam_search.lookahead"),
    ],
)
def test_constructing_a_strategy_checks_the_bounds_its_signature_declares(make, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        make()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_strategy_config_sets_what_its_class_defaults_to(name: str) -> None:
    # `import`ed and run from the command line, a strategy must search the same way.
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert config.pop("name") == name
    defaults = {
        p.name: p.default
        for p in inspect.signature(resolve(STRATEGIES, name, "strategy")).parameters.values()
        if p.default is not inspect.Parameter.empty and p.name not in INJECTED
    }
    assert config == defaults


def test_dvts_runs_independent_subtrees() -> None:
    b = ScriptedBackend(p_correct=0.5)
    dvts = DVTS(n=8, width=4, verifier=PRMVerifier(b))
    assert accuracy(dvts, b) >= 0.8
    first = b.calls[0]
    assert [r.n for r in first] == [4] * (2 * len(PROBLEMS))  # N/M roots of M children, every query
    # Each subtree judges its own M candidates and keeps its own best: never a pool of all N.
    judged: list[tuple[int, int]] = []

    class Recording(PRMVerifier):
        async def score_partials(self, problem, partials, ctx=None):  # type: ignore[no-untyped-def]
            judged.append((id(ctx), len(partials)))
            return await super().score_partials(problem, partials, ctx)

    one = ScriptedBackend(p_correct=0.5)
    asyncio.run(DVTS(n=8, width=4, verifier=Recording(one)).solve(QueryContext(PROBLEMS[1], one)))
    assert judged and {size for _, size in judged} == {4}
    assert len({view for view, _ in judged}) == 2  # each subtree through a context view of its own


def test_dvts_subtrees_sample_the_same_whatever_order_their_calls_reach_the_engine(monkeypatch) -> None:
    import strategies.dvts

    async def solve() -> list[str]:
        b = ScriptedBackend(p_correct=0.5)
        answer = await DVTS(n=8, width=4, verifier=PRMVerifier(b)).solve(QueryContext(PROBLEMS[1], b, seed=5))
        return [c.completion for c in answer.candidates]

    async def reversed_gather(*coros):  # the subtrees one after another, the last first
        out = [await c for c in reversed(coros)]
        return out[::-1]

    together = asyncio.run(solve())
    monkeypatch.setattr(strategies.dvts.asyncio, "gather", reversed_gather)
    assert asyncio.run(solve()) == together


def test_mcts_expands_several_leaves_per_wave_in_one_batch() -> None:
    # The stand-in knows two steps (right, off by one): a state that drew the wrong one k
    # times has no other child (twins are one child), so it needs p high enough to search.
    b = ScriptedBackend(p_correct=0.7)
    mcts = MCTS(simulations=24, branching=3, parallel=3, verifier=PRMVerifier(b))
    assert accuracy(mcts, b) >= 0.8
    # virtual loss spreads a wave over distinct leaves: one engine batch holds
    # several leaves of every query's tree
    assert max(len(call) for call in b.calls) > len(PROBLEMS)


def test_mcts_keeps_one_child_per_distinct_step() -> None:
    b = ScriptedBackend(p_correct=0.5)  # two steps to draw from: k=4 samples hold twins
    mcts = MCTS(simulations=12, branching=4, verifier=PRMVerifier(b))
    tree, _ = asyncio.run(mcts.search(QueryContext(PROBLEMS[0], b)))
    parents, stack = [], [tree]
    while stack:
        node = stack.pop()
        stack += node.children
        parents += [node] if node.children else []
    assert parents and all(len({c.steps[-1] for c in n.children}) == len(n.children) <= 2 for n in parents)
    assert all(r.n == 4 for call in b.calls for r in call)  # k samples drawn all the same


def test_mcts_rollout_evaluation_finds_answers() -> None:
    b = ScriptedBackend(p_correct=0.5)
    mcts = MCTS(simulations=8, branching=3, parallel=4, evaluation="both", verifier=PRMVerifier(b))
    assert accuracy(mcts, b) >= 0.7


def test_mcts_rollouts_value_a_child_that_has_finished_by_its_own_score() -> None:
    b = ScriptedBackend(p_correct=1.0)  # every step right: the stand-in PRM gives each 0.9
    mcts = MCTS(simulations=12, branching=2, parallel=2, evaluation="rollout", verifier=PRMVerifier(b))
    tree, _ = asyncio.run(mcts.search(QueryContext(arith_problems(limit=1, steps=1, seed=3)[0], b)))
    ended, stack = [], [tree]
    while stack:
        node = stack.pop()
        stack += node.children
        ended += [node] if node.done and node.visits else []
    assert ended and all(n.value_sum / n.visits > 0.5 for n in ended)  # not 0: unscored


def test_mcts_virtual_loss_is_fully_removed() -> None:
    b = ScriptedBackend(p_correct=0.5)
    mcts = MCTS(simulations=12, branching=2, parallel=4, verifier=PRMVerifier(b))
    tree, _ = asyncio.run(mcts.search(QueryContext(PROBLEMS[0], b)))
    nodes, stack = [], [tree]
    while stack:
        n = stack.pop()
        nodes.append(n)
        stack += n.children
    assert len(nodes) > 12
    # only real visits remain (whole numbers) and each carries a value in [0, 1]
    for n in nodes:
        assert n.visits == int(n.visits) >= 0
        if n.visits:
            assert 0.0 <= n.value_sum / n.visits <= 1.0
    assert tree.visits == 12


@pytest.mark.parametrize("selection", ["puct", "uct"])
def test_mcts_asks_the_engine_for_step_logprobs_when_puct_needs_priors(selection: str) -> None:
    b = ScriptedBackend(p_correct=0.5)
    mcts = MCTS(simulations=8, branching=3, parallel=4, selection=selection, verifier=PRMVerifier(b))
    tree, _ = asyncio.run(mcts.search(QueryContext(PROBLEMS[0], b)))
    puct = selection == "puct"
    expansions = [r for call in b.calls for r in call if r.stop]  # (a rollout runs to the answer: no stop)
    assert expansions and all(r.logprobs is puct for r in expansions)
    # the stand-in, like the engines, reports a step's log-probability only when asked
    assert tree.children and all((kid.logprob < 0) is puct for kid in tree.children)


@pytest.mark.parametrize("first", [-1.0, -6.0])
def test_puct_prefers_the_unvisited_step_the_policy_finds_likelier(first: float) -> None:
    parent = Node(ids=[], visits=1.0)
    a = Node(ids=[], steps=["a"], logprob=first, parent=parent)
    b = Node(ids=[], steps=["b"], logprob=-7.0 - first, parent=parent)
    parent.children = [a, b]
    assert MCTS(selection="puct").select_leaf(parent) is (a if first > -3.5 else b)


def test_uct_counts_a_parents_visits_as_its_childrens() -> None:
    """N(s) = sum_b N(s, b). The parent's own count lags its children's (each child's
    evaluation is its first visit): with it, log N(s) = 0 and the choice would be greedy."""
    parent = Node(ids=[], visits=1.0, value_sum=0.6)
    often = Node(ids=[], steps=["a"], visits=3.0, value_sum=1.8, parent=parent)  # mean 0.6
    once = Node(ids=[], steps=["b"], visits=1.0, value_sum=0.5, parent=parent)  # mean 0.5
    parent.children = [often, once]
    assert MCTS(selection="uct", virtual_loss=0.0).select_leaf(parent) is once


def test_verify_revise_resamples_from_the_first_bad_step() -> None:
    b = ScriptedBackend(p_correct=0.5)
    vr = VerifyRevise(rounds=4, verifier=PRMVerifier(b))
    assert accuracy(vr, b) >= accuracy(CoT(), ScriptedBackend(p_correct=0.5)) + 0.2


@pytest.mark.parametrize(
    ("completion", "scores", "kept"),
    [
        ("s1\n\ns2\ns3\nA:7", [0.9, 0.9, 0.1, 0.9], "s1\n\ns2\n"),  # a blank piece is no step of its own
        ("s1\ns2\nA:7\n", [0.8, 0.8, 0.7], "s1\ns2\n"),  # rejected though every step passed: not after A:7
        ("s1\ns2\nA:7\n", [0.9, 0.6, 0.7], "s1\n"),
        ("s1\ns2\n", [0.2, 0.9], ""),
    ],
)
def test_resampling_keeps_the_steps_before_the_first_bad_or_least_trusted_one(
    completion: str, scores: list[float], kept: str
) -> None:
    from ttc.types import Verdict

    ctx = QueryContext(PROBLEMS[0], ScriptedBackend())
    verdict = Verdict(score=0.3, step_scores=scores)  # the chain as a whole rejected
    assert VerifyRevise(threshold=0.5)._keep(ctx, completion, verdict) == kept


def test_particle_filter_resamples_towards_good_steps() -> None:
    b = ScriptedBackend(p_correct=0.5)
    pf = ParticleFilter(n=8, verifier=PRMVerifier(b))
    assert accuracy(pf, b) >= 0.8


def test_particle_filter_drops_a_weak_finished_particle_and_copies_a_good_one() -> None:
    # Every step right, but a quarter of them a wrong early answer (PRM 0.1 against 0.9):
    # finished particles stay in the population, so the weak ones are resampled away.
    b = ScriptedBackend(p_correct=1.0, p_early=0.25)
    answer = ParticleFilter(n=8, verifier=PRMVerifier(b)).solve_sync(PROBLEMS[0].prompt, b)
    assert len(answer.candidates) == 8
    assert sum(c.answer == PROBLEMS[0].answer for c in answer.candidates) >= 7


@pytest.mark.parametrize(("open_first", "open_later", "kept"), [(0.7, 0.1, 8), (0.5, 0.9, 0)])
def test_a_finished_particle_competes_with_the_open_ones_at_every_later_step(
    open_first: float, open_later: float, kept: int
) -> None:
    """An answer given as the first step scores 0.6 (a later answer 0). Open chains score
    ``open_first`` after one step and ``open_later`` after more: the finished particle, long
    past its own step, is copied over every open chain once they fall below it, and dropped
    once they rise above it (a population that set it aside would keep just its one copy)."""

    class ByDepth(PRMVerifier):
        async def score_partials(self, problem, partials, ctx=None):  # type: ignore[no-untyped-def]
            first = [len(steps) == 1 for steps in partials]
            return [
                (0.6 if one else 0.0) if steps[-1].startswith("A:") else open_first if one else open_later
                for steps, one in zip(partials, first, strict=True)
            ]

    b = ScriptedBackend(p_correct=1.0, p_early=0.25)  # this seed answers at once in one first step
    answer = ParticleFilter(n=8, verifier=ByDepth(b)).solve_sync(PROBLEMS[0].prompt, b, seed=1)
    assert len(answer.candidates) == 8
    assert sum(c.completion.count("\n") == 1 for c in answer.candidates) == kept


def test_runs_repeat_with_the_same_seed() -> None:
    a = asyncio.run(run_queries(PROBLEMS[:6], BestOfN(n=4), ScriptedBackend(0.5), grade, seed=3, progress=False))
    b = asyncio.run(run_queries(PROBLEMS[:6], BestOfN(n=4), ScriptedBackend(0.5), grade, seed=3, progress=False))
    key = lambda rs: sorted((r["id"], r["completion"]) for r in rs)  # noqa: E731
    assert key(a) == key(b)
    c = asyncio.run(run_queries(PROBLEMS[:6], BestOfN(n=4), ScriptedBackend(0.5), grade, seed=4, progress=False))
    assert key(a) != key(c)


def test_solve_sync_reads_a_bare_reference_prompt_in_its_own_format() -> None:
    """The README's agent-code example: a plain string prompt, answered on its `A:` line."""
    answer = BestOfN(n=4).solve_sync("Q:37+45*2-18=?\n", ScriptedBackend(p_correct=1.0))
    assert answer.answer == "146" and all(c.answer == "146" for c in answer.candidates)
