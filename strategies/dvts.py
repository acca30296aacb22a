"""Diverse verifier tree search (Beeching et al. 2024): N/M independent subtrees,
each a beam search of width M keeping one survivor, their answers pooled."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import NonNegativeFloat, PositiveInt

from strategies.base import Answer, Strategy
from strategies.beam_search import BeamSearch, pick
from ttc.context import QueryContext
from verifiers.base import Verifier


class DVTS(Strategy):
    name = "dvts"
    default_verifier = "prm"

    def __init__(
        self,
        n: PositiveInt = 16,
        width: PositiveInt = 4,
        max_depth: PositiveInt = 12,
        select: Literal["best", "weighted"] = "weighted",
        temperature: NonNegativeFloat = 1.0,
        max_step_tokens: PositiveInt = 48,
        verifier: Verifier | None = None,
    ) -> None:
        if n < width or n % width:
            raise ValueError(f"dvts needs n to be a multiple of width (n={n}, width={width})")
        self.subtrees = n // width
        self.select = select
        self.beam = BeamSearch(
            n=width, width=width, max_depth=max_depth, temperature=temperature,
            max_step_tokens=max_step_tokens, verifier=verifier,
        )

    @staticmethod
    def needs_verifier(args: dict) -> bool:
        return True

    async def solve(self, ctx: QueryContext) -> Answer:
        trees = await asyncio.gather(*(self.beam.search(ctx.branch("subtree", i)) for i in range(self.subtrees)))
        return pick(ctx, [n for tree in trees for n in tree], self.select)
