"""Chain of thought: one sampled chain, optionally capped in thinking tokens."""

from __future__ import annotations

from pydantic import NonNegativeFloat, PositiveInt

from strategies.base import Answer, Strategy, TopP, candidate
from ttc.context import QueryContext
from ttc.types import GenRequest


class CoT(Strategy):
    name = "cot"

    def __init__(self, temperature: NonNegativeFloat = 1.0, top_p: TopP = 1.0, max_tokens: PositiveInt = 160) -> None:
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens

    async def solve(self, ctx: QueryContext) -> Answer:
        (res,) = await ctx.generate(
            [GenRequest(prompt=ctx.prompt, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)]
        )
        c = candidate(ctx.problem, res.completions[0].text)
        return Answer(answer=c.answer, completion=c.completion, candidates=[c])
