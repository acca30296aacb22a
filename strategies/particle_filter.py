"""Particle filtering over reasoning steps (Puri et al. 2025).

    particles <- N empty chains, equal weights
    repeat until every particle is finished (or max_depth):
        extend every unfinished particle by one step
        weight each by the PRM score of its newest step (a finished one keeps its weight)
        resample N particles from all of them in proportion to softmax(weight / temperature)
    answer: the particle with the highest weight (or a weighted vote over the particles)

Finished particles stay in the population, as in the paper: a good answer is copied
and takes the place of weak unfinished chains, a weak one is dropped. Resampled copies
share their whole prefix, which the engine's cache holds once.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from strategies.base import Answer, Strategy
from strategies.beam_search import pick
from strategies.tree import Node, expand, root, score
from ttc.context import QueryContext
from verifiers.base import Verifier


class ParticleFilter(Strategy):
    name = "particle_filter"
    default_verifier = "prm"

    def __init__(
        self,
        n: PositiveInt = 16,
        max_depth: PositiveInt = 12,
        resample_temperature: PositiveFloat = 0.1,
        select: Literal["best", "weighted"] = "weighted",
        temperature: NonNegativeFloat = 1.0,
        max_step_tokens: PositiveInt = 48,
        verifier: Verifier | None = None,
    ) -> None:
        self.n, self.max_depth, self.tau, self.select = n, max_depth, resample_temperature, select
        self.temperature, self.max_step_tokens = temperature, max_step_tokens
        self.verifier = verifier

    @staticmethod
    def needs_verifier(args: dict) -> bool:
        return True

    def resample(self, rng: random.Random, particles: list[Node]) -> list[Node]:
        m = max(p.score for p in particles)
        weights = [math.exp((p.score - m) / self.tau) for p in particles]
        return rng.choices(particles, weights=weights, k=self.n)

    async def solve(self, ctx: QueryContext) -> Answer:
        assert self.verifier is not None
        rng = random.Random(ctx.seed_for("resample"))
        opts = dict(temperature=self.temperature, max_step_tokens=self.max_step_tokens, max_depth=self.max_depth)
        particles = [root(ctx)] * self.n
        for depth in range(self.max_depth):
            # Copies of one unfinished particle go out as one request with n = copies.
            copies: dict[int, list[Node]] = {}
            for p in particles:
                if not p.done:
                    copies.setdefault(id(p), []).append(p)
            if not copies:
                break
            kids = await expand(ctx, [g[0] for g in copies.values()], [len(g) for g in copies.values()], **opts)
            children = [c for ks in kids for c in ks]
            await score(ctx, self.verifier, children)
            particles = self.resample(rng, [p for p in particles if p.done] + children)
            ctx.log("pf_step", depth=depth, finished=sum(p.done for p in particles), particles=len(particles))
        return pick(ctx, [p for p in particles if p.done], self.select)
