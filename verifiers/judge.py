"""LLM-as-judge: a model grades a candidate against a rubric prompt.

Two ways to read the judge:

- ``generate``: the judge writes its assessment and ends with ``Score: N/M``
  (or a bare final number, read against ``max_score``); the score is N/M clamped
  to [0, 1] and the judge's text becomes ``Verdict.feedback`` (verify-revise's
  feedback mode sends it back to the policy).
- ``logprob``: one forward pass, no sampling: the score is P(yes) / (P(yes) + P(no))
  for the judge's next token after the rubric. Cheap and deterministic.

Either way the judge runs through the query's context with role ``verifier`` on
its own engine (by default ``ttc.build`` gives it the policy's), so its tokens
and GPU-seconds land in the query's ledger apart from generation. As a
``Verifier`` its scores drive selection (best-of-N ``select=verifier|weighted``).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Literal

from ttc.answers import extract_answer
from ttc.backends.base import Backend
from ttc.types import GenRequest, Problem, ScoreRequest, Verdict
from verifiers.base import Verifier

if TYPE_CHECKING:
    from ttc.context import QueryContext

Mode = Literal["generate", "logprob"]

GENERATE_TEMPLATE = (
    "Grade the proposed solution to this problem.\n"
    "Problem:\n{question}\n"
    "Proposed solution:\n{completion}\n"
    "Check it step by step, then end with a line 'Score: N/{max_score}', "
    "N from 0 (wrong) to {max_score} (certainly right).\n"
)
LOGPROB_TEMPLATE = (
    "Problem:\n{question}\nProposed solution:\n{completion}\nIs the proposed solution correct? Answer Yes or No.\n"
)

_FIELD = re.compile(r"\{(question|completion|answer|max_score)\}")
_NUM = r"(-?\d+(?:\.\d+)?)"
_SCORE_LINE = re.compile(rf"score\s*[:=]?\s*\**\s*{_NUM}\s*(?:/\s*{_NUM})?", re.IGNORECASE)
_FINAL_NUMBER = re.compile(rf"{_NUM}\s*(?:/\s*{_NUM})?\s*\.?\s*$")


def fill(template: str, **fields: str) -> str:
    """Substitute ``{question}``-style fields in one pass: candidate text may
    itself contain braces (``\\boxed{}``, code) or a field's name."""
    return _FIELD.sub(lambda m: fields[m.group(1)], template)


def parse_score(text: str, max_score: float) -> float | None:
    """The judge's score in [0, 1]: the last ``Score: N[/M]``, else a number
    ending the text; None when the judge gave none."""
    matches = list(_SCORE_LINE.finditer(text))
    m = matches[-1] if matches else _FINAL_NUMBER.search(text.strip())
    if m is None:
        return None
    scale = float(m.group(2)) if m.group(2) else max_score
    if scale <= 0:
        return None
    return min(1.0, max(0.0, float(m.group(1)) / scale))


def sigmoid(x: float) -> float:
    # Split by sign so a very confident judge cannot overflow exp().
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class JudgeVerifier(Verifier):
    name = "judge"

    def __init__(
        self,
        backend: Backend,
        mode: Mode = "logprob",
        template: str = "",
        max_score: float = 10.0,
        max_tokens: int = 256,
        temperature: float = 0.0,
        yes: str = "Yes",
        no: str = "No",
        chat: bool = True,
        model_path: str | None = None,
    ) -> None:
        """``template`` (default: one per mode) may use ``{question}``,
        ``{completion}``, ``{answer}`` (the extracted final answer) and
        ``{max_score}``. ``chat`` wraps it as a user turn when the judge's
        tokenizer has a chat template. ``model_path`` picks the model
        ``ttc.build`` starts for the judge (default: the policy); it is
        recorded here only."""
        self.backend = backend
        self.mode: Mode = mode
        self.template = template or (GENERATE_TEMPLATE if mode == "generate" else LOGPROB_TEMPLATE)
        self.max_score, self.max_tokens, self.temperature = max_score, max_tokens, temperature
        self.yes, self.no, self.chat = yes, no, chat
        self.model_path = model_path

    def prompt(self, problem: Problem, completion: str) -> str:
        """The judge's input: the filled rubric, as a chat turn where the judge has one."""
        rubric = fill(
            self.template,
            question=problem.prompt,
            completion=completion,
            answer=extract_answer(problem, completion) or "",
            max_score=f"{self.max_score:g}",
        )
        tok = self.backend.tokenizer
        if self.chat and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": rubric}], tokenize=False, add_generation_prompt=True
            )
        return rubric

    async def verify(self, problem: Problem, completion: str, ctx: QueryContext | None = None) -> Verdict:
        prompt = self.prompt(problem, completion)
        if self.mode == "logprob":
            return Verdict(score=await self._p_yes(prompt, ctx), status="judged")
        text = await self._assess(prompt, ctx)
        score = parse_score(text, self.max_score)
        return Verdict(
            score=0.0 if score is None else score,
            status="judged" if score is not None else "unparsed",
            feedback=text.strip(),
        )

    async def _assess(self, prompt: str, ctx: QueryContext | None) -> str:
        req = GenRequest(prompt=prompt, temperature=self.temperature, max_tokens=self.max_tokens)
        if ctx is not None:
            (res,) = await ctx.generate([req], role="verifier", backend=self.backend)
        else:
            (res,) = await self.backend.generate([req.model_copy(update={"seed": 0})])
        return res.completions[0].text

    async def _p_yes(self, prompt: str, ctx: QueryContext | None) -> float:
        reqs = [ScoreRequest(prompt=prompt, continuation=c) for c in (self.yes, self.no)]
        yes, no = await (ctx.score(reqs, self.backend) if ctx else self.backend.score(reqs))
        # Normalised over the two verdicts: mass the judge puts elsewhere says nothing.
        return sigmoid(sum(yes.token_logprobs) - sum(no.token_logprobs))
