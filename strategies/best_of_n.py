"""Best-of-N: sample N chains, then pick by majority vote, verifier score, or
verifier-weighted vote (scores summed per distinct answer)."""

from __future__ import annotations

from typing import Literal

from pydantic import NonNegativeFloat, PositiveInt

from strategies.base import (
    Answer,
    Strategy,
    TopP,
    best_scored,
    candidate,
    majority,
    score_candidates,
    weighted,
)
from ttc.context import QueryContext
from ttc.types import GenRequest
from verifiers.base import Verifier

Select = Literal["majority", "verifier", "weighted"]


class BestOfN(Strategy):
    name = "best_of_n"

    def __init__(
        self,
        n: PositiveInt = 16,
        select: Select = "majority",
        verifier: Verifier | None = None,
        temperature: NonNegativeFloat = 1.0,
        top_p: TopP = 1.0,
        max_tokens: PositiveInt = 160,
    ) -> None:
        if select != "majority" and verifier is None:
            raise ValueError(f"best_of_n select={select} needs a verifier")
        self.n, self.select, self.verifier = n, select, verifier
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens

    @staticmethod
    def needs_verifier(args: dict) -> bool:
        return args.get("select", "majority") != "majority"

    async def solve(self, ctx: QueryContext) -> Answer:
        (res,) = await ctx.generate(
            [
                GenRequest(
                    prompt=ctx.prompt,
                    n=self.n,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    max_tokens=self.max_tokens,
                )
            ]
        )
        cands = [candidate(ctx.problem, c.text) for c in res.completions]
        if self.select == "majority":
            best = majority(cands)
        else:
            assert self.verifier is not None
            await score_candidates(self.verifier, ctx, cands)
            best = best_scored(cands) if self.select == "verifier" else weighted(cands)
        return Answer(answer=best.answer, completion=best.completion, candidates=cands)
