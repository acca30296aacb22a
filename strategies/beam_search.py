"""Step-level beam search guided by a process reward model (Snell et al. 2024).

    candidates <- N first steps; N/M beams open
    repeat up to max_depth:
        score the candidates by PRM             (optionally after a greedy lookahead)
        every finished candidate is an answer
        the open beams take the best candidates; a beam whose best chain has finished closes
        each open beam's chain proposes M next steps
    answer: the best finished chain by PRM score, or a PRM-weighted vote

DVTS runs this with one beam per subtree: a subtree ends when its best step ends the
chain, not when any of its candidates does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt

from strategies.base import Answer, Strategy, best_scored, candidate, weighted
from strategies.tree import Node, expand, root, score
from ttc.context import QueryContext
from verifiers.base import Verifier


class BeamSearch(Strategy):
    name = "beam_search"
    default_verifier = "prm"

    def __init__(
        self,
        n: PositiveInt = 16,
        width: PositiveInt = 4,
        max_depth: PositiveInt = 12,
        lookahead: NonNegativeInt = 0,
        select: Literal["best", "weighted"] = "best",
        temperature: NonNegativeFloat = 1.0,
        max_step_tokens: PositiveInt = 48,
        verifier: Verifier | None = None,
    ) -> None:
        if n < width or n % width:
            raise ValueError(f"beam_search needs n to be a multiple of width (n={n}, width={width})")
        self.n, self.width, self.max_depth, self.lookahead = n, width, max_depth, lookahead
        self.select, self.temperature, self.max_step_tokens = select, temperature, max_step_tokens
        self.verifier = verifier

    @staticmethod
    def needs_verifier(args: dict) -> bool:
        return True

    async def _judge(self, ctx: QueryContext, nodes: list[Node]) -> None:
        """PRM score of each node, after ``lookahead`` greedy steps when asked."""
        assert self.verifier is not None
        if not self.lookahead:
            await score(ctx, self.verifier, nodes)
            return
        ahead = nodes
        for _ in range(self.lookahead):
            open_ = [a for a in ahead if not a.done]
            steps = await expand(
                ctx, open_, 1, temperature=0.0, max_step_tokens=self.max_step_tokens, max_depth=self.max_depth
            )
            nxt = iter(kids[0] for kids in steps)
            ahead = [a if a.done else next(nxt) for a in ahead]
        await score(ctx, self.verifier, ahead)
        for node, a in zip(nodes, ahead, strict=True):
            node.score = a.score

    async def search(self, ctx: QueryContext, start: Node | None = None) -> list[Node]:
        """The finished chains, best first (also used by DVTS on each subtree)."""
        opts = dict(temperature=self.temperature, max_step_tokens=self.max_step_tokens, max_depth=self.max_depth)
        (candidates,) = await expand(ctx, [start or root(ctx)], self.n, **opts)
        beams = self.n // self.width
        finished: list[Node] = []
        for _ in range(self.max_depth):
            await self._judge(ctx, candidates)
            finished += [c for c in candidates if c.done]
            best = sorted(candidates, key=lambda c: c.score, reverse=True)[:beams]
            survivors = [c for c in best if not c.done]
            beams = len(survivors)
            ctx.log("beam_step", depth=candidates[0].depth, finished=len(finished), beams=beams)
            if not survivors:
                break
            candidates = [kid for kids in await expand(ctx, survivors, self.width, **opts) for kid in kids]
        return sorted(finished, key=lambda c: c.score, reverse=True)

    async def solve(self, ctx: QueryContext) -> Answer:
        finished = await self.search(ctx)
        return pick(ctx, finished, self.select)


def pick(ctx: QueryContext, finished: list[Node], select: str) -> Answer:
    """Choose among finished chains by their PRM scores."""
    if not finished:
        return Answer(answer=None, completion="")
    cands = [candidate(ctx.problem, n.text, n.score) for n in finished]
    best = best_scored(cands) if select == "best" else weighted(cands)
    return Answer(answer=best.answer, completion=best.completion, candidates=cands)
