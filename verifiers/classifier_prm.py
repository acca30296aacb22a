"""Classifier process reward models (Qwen/Qwen2.5-Math-PRM-7B and kin) on vLLM's pooling runner.

NOT RUN ON A REAL MODEL HERE: no such model is available on this machine. The
tests drive this adapter with a fake ``LLM`` whose outputs are shaped like
vLLM 0.32's pooling outputs; a first run on a real PRM should check the scores
against the model card's Transformers example.

How the model is read, from the Qwen2.5-Math-PRM model card, vLLM's reward-model
docs and the installed vLLM 0.32 API:

- input: a chat conversation (system prompt; the question as the user turn; the
  solution as the assistant turn), each step followed by the separator token
  ``<extra_0>``;
- engine: ``LLM(model, runner="pooling")``; ``LLM.encode(..., pooling_task=
  "token_classify")`` (vLLM 0.32 has no ``LLM.reward``); ``use_activation`` on, so
  each row of ``outputs.data`` is the two class probabilities;
- rows: one per separator where the model pools by step tag (vLLM's
  ``Qwen2ForProcessRewardModel`` does, with ``<extra_0>`` as the tag), one per
  token otherwise; both are read;
- a step's score is the positive class's probability at its separator;
  step scores aggregate by min, last or product as for token-probability PRMs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ttc.backends.base import BackendError, apportion
from ttc.backends.batching import MicroBatcher
from ttc.types import GenResult, KVGeometry, Problem, Verdict
from verifiers.base import Verifier
from verifiers.prm import Aggregate, aggregate

if TYPE_CHECKING:
    from ttc.context import QueryContext

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def start_pooling_llm(model: str, **engine: Any) -> Any:
    from vllm import LLM

    return LLM(model=model, runner="pooling", **{k: v for k, v in engine.items() if v is not None})


def engine_facts(llm: Any) -> tuple[KVGeometry, int, int]:
    """KV geometry, cache block size and device count of a running ``vllm.LLM``."""
    from ttc.backends.vllm import kv_dtype_bytes
    from ttc.models import kv_geometry

    cfg = llm.llm_engine.vllm_config
    mc, cc, pc = cfg.model_config, cfg.cache_config, cfg.parallel_config
    kv = kv_geometry(mc.hf_config, "auto")
    kv = kv.model_copy(update={"dtype_bytes": kv_dtype_bytes(cc.cache_dtype, str(mc.dtype))})
    return kv, cc.block_size, pc.tensor_parallel_size * pc.pipeline_parallel_size


class ClassifierPRM(Verifier):
    name = "classifier_prm"

    def __init__(
        self,
        model_path: str = "Qwen/Qwen2.5-Math-PRM-7B",
        llm: Any = None,
        aggregate: Aggregate = "min",
        step_separator: str = "<extra_0>",
        system_prompt: str = SYSTEM_PROMPT,
        step_delimiter: str = "\n\n",
        positive_label: int = 1,
        max_model_len: int | None = 4096,
        dtype: str | None = None,
        gpu_memory_utilization: float | None = 0.3,
        trust_remote_code: bool = False,
    ) -> None:
        """Starts its own pooling engine for ``model_path`` unless ``llm`` is given.
        ``step_delimiter`` splits the policy's completion into steps (``ttc.build``
        passes the model's); ``system_prompt`` "" leaves the system turn out."""
        if llm is None:
            llm = start_pooling_llm(
                model_path,
                max_model_len=max_model_len,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                trust_remote_code=trust_remote_code,
            )
        self.llm = llm
        self.tokenizer = self.llm.get_tokenizer()
        self.how: Aggregate = aggregate
        self.separator, self.delim = step_separator, step_delimiter
        self.system_prompt, self.positive = system_prompt, positive_label
        self.sep_id = self.tokenizer.convert_tokens_to_ids(step_separator)
        if self.sep_id is None or self.sep_id == self.tokenizer.unk_token_id:
            raise ValueError(f"classifier_prm: {step_separator!r} is not a token of {model_path}")
        self.kv, self.block_size, self.num_devices = engine_facts(self.llm)
        self._batcher: MicroBatcher[list[int], tuple[Any, int, float]] = MicroBatcher(self._run)

    # -- request side ---------------------------------------------------------------
    def split(self, completion: str) -> list[str]:
        # A separator inside a step's text would read as one more step: drop it.
        return [s.strip().replace(self.separator, "") for s in completion.split(self.delim) if s.strip()]

    def format(self, question: str, steps: list[str]) -> str:
        """The model card's input: the chat with a separator after every step."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "".join(s + self.separator for s in steps)},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, question: str, steps: list[str]) -> list[int]:
        # The chat template already wrote any special prefix tokens.
        return list(self.tokenizer(self.format(question, steps), add_special_tokens=False).input_ids)

    # -- engine side (worker thread) ------------------------------------------------
    def _run(self, jobs: Sequence[list[int]], batch_id: int) -> list[tuple[Any, int, float]]:
        from vllm import PoolingParams, TokensPrompt

        start = time.perf_counter()
        outs = self.llm.encode(
            [TokensPrompt(prompt_token_ids=ids) for ids in jobs],
            PoolingParams(use_activation=True),
            use_tqdm=False,
            pooling_task="token_classify",
        )
        busy = (time.perf_counter() - start) * self.num_devices
        computed = [len(o.prompt_token_ids) - (o.num_cached_tokens or 0) for o in outs]
        return [(o, batch_id, s) for o, s in zip(outs, apportion(busy, computed), strict=True)]

    def read_scores(self, out: Any) -> list[float]:
        """Positive-class probability at each separator of one pooling output."""
        ids = list(out.prompt_token_ids)
        marks = [i for i, t in enumerate(ids) if t == self.sep_id]
        rows = out.outputs.data.tolist()
        if len(rows) == len(ids) and len(rows) != len(marks):
            rows = [rows[i] for i in marks]  # per-token pooling: keep the separators' rows
        if len(rows) != len(marks):
            raise BackendError(f"classifier_prm: {len(rows)} reward rows for {len(marks)} step separators")
        return [float(r[self.positive]) for r in rows]

    # -- verifier -------------------------------------------------------------------
    async def score_steps(self, problem: Problem, steps: list[str], ctx: QueryContext | None) -> list[float]:
        if not steps:
            return []
        ((out, batch_id, seconds),) = await self._batcher.submit([self.encode(problem.prompt, steps)])
        if ctx is not None:
            # A pooling engine is no token-probability Backend, so ctx.score cannot
            # serve it: its usage goes straight into the query's ledger as verifier work.
            usage = GenResult(
                prompt_token_ids=list(out.prompt_token_ids),
                cached_tokens=out.num_cached_tokens or 0,
                completions=[],
                batch_id=batch_id,
                engine_seconds=seconds,
            )
            ctx.ledger.record([usage], "verifier", self.block_size)
        return self.read_scores(out)

    async def verify(self, problem: Problem, completion: str, ctx: QueryContext | None = None) -> Verdict:
        scores = await self.score_steps(problem, self.split(completion), ctx)
        return Verdict(score=aggregate(scores, self.how), step_scores=scores)

    async def score_partial(self, problem: Problem, steps: list[str], ctx: QueryContext | None = None) -> float:
        scores = await self.score_steps(problem, self.split("".join(steps)), ctx)
        return scores[-1] if scores else 0.0
