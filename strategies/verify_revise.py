"""Generate, verify, revise: up to R rounds of feeding the verdict back.

    chain <- sample(prompt)
    repeat R times:
        verdict <- verify(chain)                     (answer check, code tests, PRM or judge)
        if verdict accepts: stop
        chain <- revise(chain, verdict)

Two ways to revise. ``feedback`` (chat models): the verdict's text goes back into
the prompt, after the failed attempt, with a request to fix it. ``resample``
(models that cannot read feedback, like the reference model): keep the steps the
verifier judged good and resample from the first bad one (or, if the verdict rejects
a chain whose every step passed, from the least trusted step); the kept prefix is
served from the prefix cache.
"""

from __future__ import annotations

from typing import Literal

from pydantic import NonNegativeFloat, PositiveInt

from strategies.base import Answer, Candidate, Strategy, candidate
from ttc.context import QueryContext
from ttc.types import GenRequest, Verdict
from verifiers.base import Verifier

FEEDBACK = "\n\nA check of this answer says: {feedback}\nPlease correct the solution.\n"


class VerifyRevise(Strategy):
    name = "verify_revise"
    default_verifier = "prm"

    def __init__(
        self,
        rounds: PositiveInt = 3,
        revise: Literal["resample", "feedback"] = "resample",
        threshold: float = 0.5,
        temperature: NonNegativeFloat = 1.0,
        max_tokens: PositiveInt = 160,
        verifier: Verifier | None = None,
    ) -> None:
        self.rounds, self.revise, self.threshold = rounds, revise, threshold
        self.temperature, self.max_tokens = temperature, max_tokens
        self.verifier = verifier

    @staticmethod
    def needs_verifier(args: dict) -> bool:
        return True

    def accepts(self, v: Verdict) -> bool:
        return bool(v.passed) if v.passed is not None else v.score >= self.threshold

    async def _sample(self, ctx: QueryContext, prompt: list[int]) -> str:
        (res,) = await ctx.generate(
            [GenRequest(prompt=prompt, temperature=self.temperature, max_tokens=self.max_tokens)]
        )
        return res.completions[0].text

    def _keep(self, ctx: QueryContext, completion: str, verdict: Verdict) -> str:
        """The text before the step to resample from: the first step judged bad, else (the
        verdict rejects a chain whose every step passed) the least trusted one, so a revision
        never continues after the rejected answer. Steps are what verifiers score: the
        non-blank pieces between delimiters (blank ones stay in the kept text)."""
        scores = verdict.step_scores
        if not scores:
            return ""
        cut = next((i for i, s in enumerate(scores) if s < self.threshold), None)
        if cut is None:
            cut = min(range(len(scores)), key=scores.__getitem__)
        kept, step = [], 0
        for piece in completion.split(ctx.step_delimiter):
            if piece.strip():
                if step == cut:
                    break
                step += 1
            kept.append(piece + ctx.step_delimiter)
        return "".join(kept)

    async def solve(self, ctx: QueryContext) -> Answer:
        assert self.verifier is not None
        prompt_ids = ctx.encode(ctx.prompt)
        completion = await self._sample(ctx, prompt_ids)
        tried: list[Candidate] = []
        for r in range(self.rounds + 1):
            verdict = await self.verifier.verify(ctx.problem, completion, ctx)
            tried.append(candidate(ctx.problem, completion, verdict.score))
            ctx.log("verify", round=r, score=verdict.score, status=verdict.status)
            if self.accepts(verdict) or r == self.rounds:
                break
            if self.revise == "resample":
                kept = self._keep(ctx, completion, verdict)
                completion = kept + await self._sample(ctx, prompt_ids + ctx.backend.encode_continuation(kept))
            else:
                note = FEEDBACK.format(feedback=verdict.feedback or f"score {verdict.score:.2f}, likely wrong")
                completion = await self._sample(ctx, ctx.encode(ctx.prompt + completion + note))
        best = max(tried, key=lambda c: c.score or 0.0)
        return Answer(answer=best.answer, completion=best.completion, candidates=tried)
