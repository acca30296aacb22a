"""What a strategy sees of the world while it answers one query."""

from __future__ import annotations

import copy
import hashlib
import itertools
from typing import Any

from ttc.backends.base import Backend
from ttc.ledger import Ledger
from ttc.types import GenRequest, GenResult, Problem, Role, ScoreRequest, ScoreResult


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (run seed, query id, branch path)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class QueryContext:
    """One query's view of the engines, with its ledger and trace.

    Every request goes through here so it is accounted, and each completion ends at its
    first stop string (``Backend.end_at_stop``), whatever the engine. Requests without a seed
    get one derived from the run seed, the query and the request's position in
    the strategy's sequence of calls, so a rerun repeats. Branches that run
    concurrently (DVTS's subtrees) each take a ``branch`` of the context: their
    calls reach the engine in whatever order batches finish, so each counts its own.
    """

    def __init__(
        self,
        problem: Problem,
        backend: Backend,
        *,
        prompt: str | None = None,
        seed: int = 0,
        step_delimiter: str = "\n",
        ledger: Ledger | None = None,
    ) -> None:
        self.problem = problem
        self.backend = backend
        self.prompt = problem.prompt if prompt is None else prompt
        self.step_delimiter = step_delimiter
        self.seed = seed
        self.ledger = ledger or Ledger(backend.kv, backend.block_size)
        self.trace: list[dict[str, Any]] = []
        self._calls = itertools.count()
        self._scope: tuple[object, ...] = ()

    def seed_for(self, *branch: object) -> int:
        return derive_seed(self.seed, self.problem.id, *self._scope, *branch)

    def branch(self, *key: object) -> QueryContext:
        """This query as one of its concurrent branches sees it: the same engines, ledger and
        trace, with seeds of its own (``key`` names the branch)."""
        view = copy.copy(self)
        view._scope = (*self._scope, *key)
        view._calls = itertools.count()
        return view

    def encode(self, text: str) -> list[int]:
        """Prompt token ids (with the model's special prefix tokens)."""
        return self.backend.encode(text)

    async def generate(
        self, requests: list[GenRequest], role: Role = "policy", backend: Backend | None = None
    ) -> list[GenResult]:
        """Generate on ``backend`` (a judge's engine; default: the policy's)."""
        engine = backend or self.backend
        call = next(self._calls)
        requests = [
            r if r.seed is not None else r.model_copy(update={"seed": self.seed_for("call", call, i)})
            for i, r in enumerate(requests)
        ]
        results = await engine.generate(requests)
        self.ledger.record(results, role, engine.block_size)  # what the engine computed, overrun included
        for r, res in zip(requests, results, strict=True):
            res.completions = [engine.end_at_stop(c, r.stop) for c in res.completions]
        return results

    async def score(
        self, requests: list[ScoreRequest], backend: Backend | None = None, role: Role = "verifier"
    ) -> list[ScoreResult]:
        """Score continuations on ``backend`` (a reward model's engine; default: the policy's)."""
        engine = backend or self.backend
        results = await engine.score(requests)
        self.ledger.record(
            [
                GenResult(
                    prompt_token_ids=r.prompt_token_ids,
                    cached_tokens=r.cached_tokens,
                    completions=[],
                    batch_id=r.batch_id,
                    engine_seconds=r.engine_seconds,
                )
                for r in results
            ],
            role,
            engine.block_size,
        )
        return results

    def log(self, event: str, **data: Any) -> None:
        self.trace.append({"event": event, **data})
