"""Math answer equivalence with ``math-verify`` (LaTeX, fractions, intervals, sets, units)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from math_verify import parse, verify

from ttc.answers import extract_answer
from ttc.types import Problem, Verdict
from verifiers.base import Verifier

if TYPE_CHECKING:
    from ttc.context import QueryContext


_MATH_MODE = re.compile(r"(?<!\\)\$")  # an escaped \$ is a currency sign, not a delimiter


def _as_latex(answer: str) -> str:
    """math-verify reads LaTeX in math mode; bare numbers parse as they are."""
    answer = answer.strip()
    if _MATH_MODE.search(answer) or "\\boxed" in answer:
        return answer
    return f"${answer}$"


def equivalent(gold: str, predicted: str | None, timeout_s: int = 10) -> bool:
    """True when ``predicted`` is mathematically the same answer as ``gold``."""
    if predicted is None or not predicted.strip():
        return False
    g, p = parse(_as_latex(gold)), parse(_as_latex(predicted))
    if not g or not p:
        return gold.strip() == predicted.strip()
    try:
        return bool(verify(g, p, timeout_seconds=timeout_s))
    except Exception:
        return False


class MathVerifier(Verifier):
    """Checks the extracted final answer against the reference answer.

    As a *selector* this is an oracle (it reads the gold answer): best-of-N with
    it measures pass@N, an upper bound, not a deployable strategy.
    """

    name = "math"

    async def verify(self, problem: Problem, completion: str, ctx: QueryContext | None = None) -> Verdict:
        pred = extract_answer(problem, completion)
        ok = equivalent(problem.answer, pred)
        return Verdict(score=float(ok), passed=ok, status="pass" if ok else "fail")
