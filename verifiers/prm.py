"""Token-probability process reward models (Math-Shepherd / RLHFlow style).

After each step the PRM's next-token distribution judges it: the step's score
is the probability of the *good* judgement token. Any backend that can score a
continuation serves it; the shipped reference PRM uses ``<good>`` after each
newline-terminated step. Step scores aggregate by min, last or product.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from ttc.backends.base import Backend
from ttc.types import Problem, ScoreRequest, Verdict
from verifiers.base import Verifier

if TYPE_CHECKING:
    from ttc.context import QueryContext

Aggregate = Literal["min", "last", "prod"]


def aggregate(scores: list[float], how: Aggregate) -> float:
    if not scores:
        return 0.0
    if how == "min":
        return min(scores)
    if how == "last":
        return scores[-1]
    return math.prod(scores)


class PRMVerifier(Verifier):
    name = "prm"

    def __init__(
        self,
        backend: Backend,
        aggregate: Aggregate = "min",
        good_token: str = "<good>",
        step_tag: str = "",
        step_delimiter: str = "\n",
    ) -> None:
        """``step_tag`` is appended after each step before the judgement is read
        (Math-Shepherd uses a tag token; the reference PRM reads right after the
        delimiter)."""
        self.backend = backend
        self.how: Aggregate = aggregate
        vocab = backend.tokenizer.get_vocab()
        self.good_ids = [vocab[good_token]] if good_token in vocab else backend.encode_continuation(good_token)
        self.step_tag, self.delim = step_tag, step_delimiter

    def split(self, completion: str) -> list[str]:
        """Steps of a completion, each keeping its delimiter."""
        parts = completion.split(self.delim)
        steps = [p + self.delim for p in parts[:-1] if p.strip()]
        if parts[-1].strip():
            steps.append(parts[-1])
        return steps

    async def score_prefixes(self, ctx: QueryContext | None, prefixes: list[list[int]]) -> list[float]:
        """P(good) after each token-id prefix (prompt + steps so far)."""
        tag = self.backend.encode_continuation(self.step_tag) if self.step_tag else []
        reqs = [ScoreRequest(prompt=p + tag, continuation=self.good_ids) for p in prefixes]
        results = await (ctx.score(reqs, self.backend) if ctx else self.backend.score(reqs))
        return [math.exp(sum(r.token_logprobs)) for r in results]

    async def score_steps(self, ctx: QueryContext | None, prompt: str, steps: list[str]) -> list[float]:
        ids = self.backend.encode(prompt)
        prefixes = []
        for s in steps:
            ids = ids + self.backend.encode_continuation(s)
            prefixes.append(ids)
        return await self.score_prefixes(ctx, prefixes)

    async def score_partial(self, problem: Problem, steps: list[str], ctx: QueryContext | None = None) -> float:
        return (await self.score_partials(problem, [steps], ctx))[0]

    async def score_partials(
        self, problem: Problem, partials: list[list[str]], ctx: QueryContext | None = None
    ) -> list[float]:
        prompt = self.backend.encode(ctx.prompt if ctx else problem.prompt)
        return await self.score_prefixes(ctx, [prompt + self.backend.encode_continuation("".join(s)) for s in partials])

    async def verify(self, problem: Problem, completion: str, ctx: QueryContext | None = None) -> Verdict:
        prompt = ctx.prompt if ctx else problem.prompt
        scores = await self.score_steps(ctx, prompt, self.split(completion))
        return Verdict(score=aggregate(scores, self.how), step_scores=scores)
