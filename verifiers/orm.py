"""Token-probability outcome reward model: one judgement after the whole completion.

The ORM reads the reward model's next-token distribution once, after the prompt
and the full completion: the score is the probability of the *good* judgement
token. It is a PRM read at the final position only, so it reuses
``PRMVerifier``'s scoring. The shipped reference PRM serves as an ORM too: it
labels a step good only when that step and every step before it are right, so
its judgement after the final ``A:`` line says whether the whole chain is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ttc.backends.base import Backend
from ttc.types import Problem, Verdict
from verifiers.prm import PRMVerifier

if TYPE_CHECKING:
    from ttc.context import QueryContext


class ORMVerifier(PRMVerifier):
    name = "orm"

    def __init__(
        self,
        backend: Backend,
        good_token: str = "<good>",
        step_tag: str = "",
        model_path: str | None = None,
    ) -> None:
        """``step_tag`` is appended after the completion before the judgement is
        read. ``model_path`` picks the model ``ttc.build`` starts for this
        verifier (default: the run's PRM); it is recorded here only."""
        super().__init__(backend, aggregate="last", good_token=good_token, step_tag=step_tag)
        self.model_path = model_path

    async def verify(self, problem: Problem, completion: str, ctx: QueryContext | None = None) -> Verdict:
        # PRMVerifier.score_partial reads P(good) after the prompt and the text so
        # far: for an ORM that is the judgement of the whole completion, and also
        # its score_partial (the text so far judged as if it were final).
        return Verdict(score=await self.score_partial(problem, [completion], ctx))
