"""A deterministic stand-in engine for unit tests of strategy logic (never of backends).

It speaks the reference arithmetic format: each next step is right with
probability ``p_correct`` (drawn from the request's seed), otherwise off by one;
with probability ``p_early`` a step before the last is a wrong answer instead,
which ends the chain early.
As a reward model it judges the newest step by exact checking, with a little
noise, so PRM-guided search has a real signal to follow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from ttc.backends.base import Backend
from ttc.backends.batching import MicroBatcher
from ttc.reference.tokenizer import EOS, GOOD, build_tokenizer
from ttc.tasks import arith
from ttc.types import Completion, GenRequest, GenResult, KVGeometry, ScoreRequest, ScoreResult


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, p_correct: float = 0.6, block_size: int = 1, p_early: float = 0.0) -> None:
        self.tokenizer = build_tokenizer()
        self.kv = KVGeometry(num_layers=2, num_kv_heads=1, head_dim=4, dtype_bytes=2)
        self.block_size = block_size
        self.p, self.p_early = p_correct, p_early
        self.calls: list[list[GenRequest]] = []  # each generate() call, as received
        self.max_model_len = 512
        self.eos = self.tokenizer.convert_tokens_to_ids(EOS)
        self._batcher: MicroBatcher[GenRequest, GenResult] = MicroBatcher(self._run)

    def _split(self, ids: list[int]) -> tuple[arith.ArithProblem, list[str]]:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        head, _, rest = text.partition("\n")
        return arith.parse_expression(head.removeprefix("Q:").removesuffix("=?")), arith.split_steps(rest)

    def _next_step(self, prob: arith.ArithProblem, done: list[str], rng: random.Random) -> str:
        expected = prob.step_lines()
        i = len(done)
        if i >= len(expected) or any(d.startswith("A:") for d in done):
            return ""
        line = expected[i]
        if self.p_early and i < len(expected) - 1 and rng.random() < self.p_early:
            return f"A:{rng.randint(0, 999)}\n"
        if rng.random() >= self.p:
            lhs, _, value = line.rpartition("=") if "=" in line else ("", "", line)
            line = f"A:{int(line[2:]) + 1}" if line.startswith("A:") else f"{lhs}={int(value) + 1}"
        return line + "\n"

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        # Through the same batcher as the real backends, so tests see engine batches.
        return await self._batcher.submit(requests)

    def _run(self, requests: Sequence[GenRequest], batch_id: int) -> list[GenResult]:
        self.calls.append(list(requests))
        out = []
        for r in requests:
            ids = self.encode(r.prompt)
            prob, done = self._split(ids)
            comps = []
            for j in range(r.n):
                rng = random.Random(f"{r.seed}:{j}")
                steps: list[str] = []
                while True:
                    step = self._next_step(prob, done + [s.strip() for s in steps], rng)
                    if not step:
                        break
                    steps.append(step)
                    if r.stop and any(s in step for s in r.stop):
                        break
                text = "".join(steps)
                tok = self.encode_continuation(text) if text else []
                finish = "stop"
                if not (r.stop and text.endswith(tuple(r.stop))):
                    tok = [*tok, self.eos]
                # Like the real engines: log-probabilities only when the request asks.
                lps = [-1.0] * len(tok) if r.logprobs else None
                comps.append(
                    Completion(
                        token_ids=tok,
                        text=text,
                        cumulative_logprob=sum(lps) if lps is not None else None,
                        logprobs=lps,
                        finish_reason=finish,
                    )
                )
            out.append(GenResult(prompt_token_ids=ids, completions=comps, batch_id=batch_id, engine_seconds=0.01))
        return out

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        good = self.tokenizer.convert_tokens_to_ids(GOOD)
        out = []
        for r in requests:
            ids = self.encode(r.prompt)
            cont = self.encode_continuation(r.continuation)
            assert cont == [good], "the stand-in PRM only judges <good>"
            prob, steps = self._split(ids)
            labels = prob.step_labels("\n".join(steps))
            ok = bool(labels) and labels[-1]
            out.append(
                ScoreResult(
                    token_logprobs=[math.log(0.9 if ok else 0.1)],
                    prompt_token_ids=ids + cont,
                    batch_id=len(self.calls),
                    engine_seconds=0.001,
                )
            )
        return out
