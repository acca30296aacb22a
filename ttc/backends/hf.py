"""Hugging Face transformers backend: for machines with neither engine, and GPU
checks where only PyTorch is installed. No prefix cache: cached tokens are 0."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ttc.backends.base import Backend, BackendError, apportion
from ttc.backends.batching import MicroBatcher
from ttc.types import Completion, GenRequest, GenResult, ScoreRequest, ScoreResult


class _StopStrings:
    """Ends a one-sequence ``generate`` at the token that completes a stop string of the
    *completion* (the prompt never counts, as in the engines), kept in the output as they
    keep it. transformers' own ``stop_strings`` would also match a stop string that begins
    in the prompt. Each step decodes only the tail that can hold a new match: the first
    match ends generation, so none can lie further back."""

    def __init__(self, decode: Any, start: int, stop: list[str]) -> None:
        self.decode, self.start, self.stop = decode, start, stop
        # A token decodes to a character or more (special ones, skipped, to none: margin).
        self.window = max(len(s) for s in stop) + 2

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        tail = input_ids[0, max(self.start, input_ids.shape[1] - self.window) :].tolist()
        hit = any(s in self.decode(tail) for s in self.stop)
        return torch.tensor([hit], dtype=torch.bool, device=input_ids.device)


class HFBackend(Backend):
    name = "hf"

    def __init__(
        self,
        model: str,
        seed: int = 0,
        *,
        device: str = "auto",
        dtype: str | None = None,
        max_model_len: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ttc.models import kv_geometry

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = None if dtype in (None, "auto") else getattr(torch, dtype)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        cfg = self.model.config
        self.max_model_len = max_model_len or getattr(cfg, "max_position_embeddings", None)
        bytes_ = torch.finfo(self.model.dtype).bits / 8
        self.kv = kv_geometry(cfg, "auto").model_copy(update={"dtype_bytes": bytes_})
        self.seed = seed
        self._batcher: MicroBatcher[tuple[str, list[int], Any], Any] = MicroBatcher(self._run)

    # -- worker thread -----------------------------------------------------------------
    def _run(self, jobs: Sequence[tuple[str, list[int], Any]], batch_id: int) -> list[tuple[Any, int, float]]:
        start = time.perf_counter()
        outs = [self._generate(ids, req) if kind == "gen" else self._score(ids, req) for kind, ids, req in jobs]
        busy = time.perf_counter() - start
        computed = [n for _, n in outs]
        return [(o, batch_id, s) for (o, _), s in zip(outs, apportion(busy, computed), strict=True)]

    def _generate(self, ids: list[int], r: GenRequest) -> tuple[list[Completion], int]:
        import torch
        from transformers import StoppingCriteriaList

        completions, computed = [], len(ids)
        stops = [_StopStrings(self.decode, len(ids), r.stop)] if r.stop else []
        for i in range(r.n):
            # One sample at a time so that each has its own reproducible seed.
            if r.seed is not None:
                torch.manual_seed(r.seed + i)
            with torch.no_grad():
                out = self.model.generate(
                    torch.tensor([ids], device=self.device),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                    do_sample=r.temperature > 0,
                    temperature=r.temperature if r.temperature > 0 else None,
                    top_p=r.top_p,
                    top_k=0,
                    max_new_tokens=r.max_tokens,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                    stopping_criteria=StoppingCriteriaList(stops),
                )
            new = out.sequences[0, len(ids):].tolist()
            logps = [
                torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, new, strict=False)
            ]
            text = self.decode(new)
            ended = bool(new) and new[-1] == self.tokenizer.eos_token_id
            finish = "stop" if ended or any(s in text for s in r.stop) else "length"
            computed += len(new)
            completions.append(
                Completion(
                    token_ids=new,
                    text=text,
                    cumulative_logprob=sum(logps) if r.logprobs else None,  # as the engines: when asked
                    logprobs=logps if r.logprobs else None,
                    finish_reason=finish,
                )
            )
        return completions, computed

    def _score(self, ids: list[int], start: int) -> tuple[list[float], int]:
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.device)).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1)
        return [logp[i - 1, ids[i]].item() for i in range(start, len(ids))], len(ids)

    # -- protocol -----------------------------------------------------------------------
    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        jobs = []
        for r in requests:
            ids = self.encode(r.prompt)
            self.check_length(ids, r.max_tokens)
            jobs.append(("gen", ids, r))
        outs = await self._batcher.submit(jobs)
        return [
            GenResult(prompt_token_ids=ids, completions=c, batch_id=b, engine_seconds=s)
            for (_, ids, _), (c, b, s) in zip(jobs, outs, strict=True)
        ]

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        jobs = []
        for r in requests:
            prompt, cont = self.encode(r.prompt), self.encode_continuation(r.continuation)
            if not cont:
                raise BackendError("score needs a non-empty continuation")
            self.check_length(prompt + cont)
            jobs.append(("score", prompt + cont, len(prompt)))
        outs = await self._batcher.submit(jobs)
        return [
            ScoreResult(token_logprobs=lps, prompt_token_ids=ids, batch_id=b, engine_seconds=s)
            for (_, ids, _), (lps, b, s) in zip(jobs, outs, strict=True)
        ]
