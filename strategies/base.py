"""The strategy contract: answer one query, asynchronously, through a QueryContext."""

from __future__ import annotations

import asyncio
import functools
import inspect
from abc import ABC, abstractmethod
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from ttc.answers import extract_answer, guess_answer_format
from ttc.registry import INJECTED, check_args
from ttc.types import Problem, Verdict

if TYPE_CHECKING:
    from ttc.backends.base import Backend
    from ttc.context import QueryContext
    from verifiers.base import Verifier


# Strategy arguments declare their bounds in their types (this and pydantic's
# ``PositiveInt``, ``NonNegativeFloat``, ...). The config check enforces them before any
# engine starts, and so does every construction from code.
TopP = Annotated[float, Field(gt=0, le=1)]


class Candidate(BaseModel):
    completion: str
    answer: str | None
    score: float | None = None


class Answer(BaseModel):
    """A strategy's output: the chosen answer and the candidates it chose from."""

    answer: str | None
    completion: str
    candidates: list[Candidate] = Field(default_factory=list)


class Strategy(ABC):
    """Spend compute on one query. Implementations are plain async code: every
    ``await ctx.generate(...)`` joins the engine batch of all queries in flight."""

    name: str = "strategy"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _checked(cls.__init__, cls.name)  # type: ignore[method-assign]

    @abstractmethod
    async def solve(self, ctx: QueryContext) -> Answer:
        """Answer ``ctx.problem`` using ``ctx`` for every engine call."""

    def solve_sync(
        self, problem: Problem | str, backend: Backend, seed: int = 0, **context: Any
    ) -> Answer:
        """Blocking convenience for scripts and agent code (not from inside an event loop).

        A plain string prompt is read in the reference tasks' format when it is one
        of theirs (``Q:``/``D:`` arithmetic answers on an ``A:`` line, ``C:`` code
        tasks answer with a program), else answers are taken from ``\\boxed{}``."""
        from ttc.context import QueryContext

        if isinstance(problem, str):
            problem = Problem(id="adhoc", prompt=problem, answer_format=guess_answer_format(problem))
        return asyncio.run(self.solve(QueryContext(problem, backend, seed=seed, **context)))


def _checked(init: Any, name: str) -> Any:
    """``init`` behind the check of its arguments against its signature's types and bounds
    (``ttc.registry.check_args``, the config check's own), so that ``MCTS(simulations=0)``
    fails as ``strategy.simulations=0`` does on the command line: with one line naming it."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def checked(self: Strategy, *args: Any, **kwargs: Any) -> None:
        given = signature.bind(self, *args, **kwargs).arguments
        check_args(init, {k: v for k, v in given.items() if k not in INJECTED}, name)
        init(self, *args, **kwargs)

    return checked


def candidate(problem: Problem, completion: str, score: float | None = None) -> Candidate:
    return Candidate(completion=completion, answer=extract_answer(problem, completion), score=score)


def majority(cands: list[Candidate]) -> Candidate:
    """The most common extracted answer (first seen wins ties); unanswered ones never win."""
    votes = Counter(c.answer for c in cands if c.answer is not None)
    if not votes:
        return cands[0]
    best = max(votes, key=lambda a: (votes[a], -next(i for i, c in enumerate(cands) if c.answer == a)))
    return next(c for c in cands if c.answer == best)


def weighted(cands: list[Candidate]) -> Candidate:
    """The answer whose candidates' scores sum highest."""
    totals: dict[str, float] = {}
    for c in cands:
        if c.answer is not None:
            totals[c.answer] = totals.get(c.answer, 0.0) + (c.score or 0.0)
    if not totals:
        return cands[0]
    best = max(totals, key=lambda a: totals[a])
    return max((c for c in cands if c.answer == best), key=lambda c: c.score or 0.0)


def best_scored(cands: list[Candidate]) -> Candidate:
    return max(cands, key=lambda c: float("-inf") if c.score is None else c.score)


async def score_candidates(
    verifier: Verifier, ctx: QueryContext, cands: list[Candidate]
) -> list[Verdict]:
    verdicts = await verifier.verify_many(ctx.problem, [c.completion for c in cands], ctx)
    for c, v in zip(cands, verdicts, strict=True):
        c.score = v.score
    return verdicts
