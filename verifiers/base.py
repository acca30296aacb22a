"""The verifier contract: score a final answer, optionally each step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from ttc.types import Problem, Verdict

if TYPE_CHECKING:
    from ttc.context import QueryContext


class Verifier(ABC):
    """Scores one candidate completion for a problem.

    ``ctx`` is the query's context: verifiers that run a model (reward models,
    judges) call it so their tokens and GPU-seconds land in the query's ledger
    as verifier work; the others may ignore it.
    """

    name: str = "verifier"

    @abstractmethod
    async def verify(self, problem: Problem, completion: str, ctx: QueryContext | None = None) -> Verdict:
        """Judge ``completion`` (the model's full output after the prompt)."""

    async def score_partial(self, problem: Problem, steps: list[str], ctx: QueryContext | None = None) -> float:
        """Score a partial solution (its steps so far) to guide search; by default
        the whole-answer score of the text so far. Process reward models override
        this to judge the newest step only."""
        return (await self.verify(problem, "".join(steps), ctx)).score

    async def score_partials(
        self, problem: Problem, partials: list[list[str]], ctx: QueryContext | None = None
    ) -> list[float]:
        """``score_partial`` of many partial solutions of one problem (a search's new nodes);
        reward models send them to their engine as one list of requests."""
        import asyncio

        return list(await asyncio.gather(*(self.score_partial(problem, steps, ctx) for steps in partials)))

    async def verify_many(
        self, problem: Problem, completions: list[str], ctx: QueryContext | None = None
    ) -> list[Verdict]:
        import asyncio

        return list(await asyncio.gather(*(self.verify(problem, c, ctx) for c in completions)))
