"""Hugging Face transformers backend: for machines with neither engine, and GPU
checks where only PyTorch is installed.

Requests are batched as an engine batches them: the prompts of a batch are prefilled
together (left-padded), each prompt once for all its ``n`` samples, which then decode
side by side and leave the batch as each ends. Every sample draws from a random stream
of its own (the request's seed + the sample's index), so a seeded request samples the
same tokens whatever else shares its batch. Full blocks of every prompt, generated
sample and scored sequence stay in a prefix cache across requests
(``ttc.backends.prefix_cache``), so a branch sent as its parent's tokens plus its own
recomputes only its own, as on the engines.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import NonNegativeFloat, PositiveInt

from ttc.backends.base import Backend, BackendError, apportion
from ttc.backends.batching import MicroBatcher
from ttc.backends.prefix_cache import PrefixCache
from ttc.types import Completion, GenRequest, GenResult, ScoreRequest, ScoreResult

_LOGITS_BUDGET = 1 << 28  # float32 logits per scoring forward pass (1 GiB)


@dataclass
class _Sample:
    """One sample of request ``job``, as it decodes."""

    job: int
    req: GenRequest
    generator: Any  # torch.Generator, None for greedy
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None
    cached: int = 0  # prompt tokens reported read from the prefix cache
    first: int = 0  # the first token its pass computed, ...
    start: int = 0  # ... and where along the pass's cache that token lies


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
        max_num_seqs: PositiveInt = 64,
        block_size: PositiveInt = 16,
        prefix_cache_gib: NonNegativeFloat = 1.0,
    ) -> None:
        """``max_num_seqs``: sequences in one forward pass (samples decoding, or prompts scored).
        ``prefix_cache_gib``: memory for KV kept across requests, in blocks of ``block_size``
        tokens (0: none)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
        from transformers.cache_utils import DynamicLayer

        from ttc.models import check_context, compute_dtype, kv_geometry

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        name = compute_dtype(dtype or "auto")
        torch_dtype = None if name == "auto" else getattr(torch, name)
        self.device = device
        positions = check_context(model, max_model_len)
        self.max_model_len = max_model_len or positions
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        cfg = self.model.config
        bytes_ = torch.finfo(self.model.dtype).bits / 8
        self.kv = kv_geometry(cfg, "auto").model_copy(update={"dtype_bytes": bytes_})
        self.seed = seed
        self.max_num_seqs = max_num_seqs
        # Blocks are spliced into a batch's cache: only for layers that keep every token
        # (not sliding windows, not recurrent state).
        plain = all(type(layer) is DynamicLayer for layer in DynamicCache(config=cfg).layers)
        capacity = int(prefix_cache_gib * 2**30 / self.kv.bytes_per_token) if plain else 0
        self.prefix = PrefixCache(block_size, capacity)
        self.block_size = block_size if capacity else 1
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {t for t in [*eos, self.tokenizer.eos_token_id] if t is not None}
        self.pad_id = next(t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if t is not None)
        self._pieces: dict[int, str] = {}  # each token's text alone, for the stop check
        self._unseeded = random.Random(seed)  # streams for requests without a seed of their own
        self._batcher: MicroBatcher[tuple[str, list[int], Any], Any] = MicroBatcher(self._run)

    # -- worker thread -----------------------------------------------------------------
    def _run(
        self, jobs: Sequence[tuple[str, list[int], Any]], batch_id: int
    ) -> list[tuple[Any, int, int, float]]:
        """Each job's output, prefix-cached tokens, batch and share of the batch's time."""
        import torch

        start = time.perf_counter()
        outs: list[Any] = [None] * len(jobs)
        gens = [i for i, (kind, _, _) in enumerate(jobs) if kind == "gen"]
        scores = [i for i, (kind, _, _) in enumerate(jobs) if kind == "score"]
        with torch.no_grad():
            for i, out in zip(gens, self._generate([(jobs[i][1], jobs[i][2]) for i in gens]), strict=True):
                outs[i] = out
            for i, out in zip(scores, self._score([(jobs[i][1], jobs[i][2]) for i in scores]), strict=True):
                outs[i] = out
        busy = time.perf_counter() - start
        computed = [n for _, n, _ in outs]
        return [(o, c, batch_id, s) for (o, _, c), s in zip(outs, apportion(busy, computed), strict=True)]

    def _generate(self, jobs: list[tuple[list[int], GenRequest]]) -> list[tuple[list[Completion], int, int]]:
        """Each job's completions, tokens computed and prompt tokens read from the prefix cache."""
        samples = [
            _Sample(job, req, self._generator(req, i))
            for job, (_, req) in sorted(enumerate(jobs), key=lambda j: len(j[1][0]))  # alike lengths pad least
            for i in range(req.n)
        ]
        for lo in range(0, len(samples), self.max_num_seqs):
            self._decode(jobs, samples[lo : lo + self.max_num_seqs])
        by_job: list[list[_Sample]] = [[] for _ in jobs]
        for s in samples:
            by_job[s.job].append(s)
        results: list[tuple[list[Completion], int, int]] = []
        for (ids, req), mine in zip(jobs, by_job, strict=True):
            completions = [
                Completion(
                    token_ids=s.tokens,
                    text=self.decode(s.tokens),
                    cumulative_logprob=sum(s.logprobs) if req.logprobs else None,  # as the engines: when asked
                    logprobs=s.logprobs if req.logprobs else None,
                    finish_reason=s.finish or "length",
                )
                for s in mine
            ]
            cached = mine[0].cached  # the prompt's first prefill (a request's samples may span passes)
            results.append((completions, len(ids) - cached + sum(len(s.tokens) for s in mine), cached))
        return results

    def _generator(self, req: GenRequest, index: int) -> Any:
        import torch

        if req.temperature == 0:
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed((req.seed if req.seed is not None else self._unseeded.getrandbits(62)) + index)
        return g

    def _prefill(self, seqs: list[list[int]], limits: list[int], keep: int) -> tuple[Any, Any, Any, list[int]]:
        """One forward pass over ``seqs``, each reading its cached prefix (at most ``limits[i]``
        tokens) and computing the rest. Along the batch's cache a row holds its cached KV,
        left-padded, then its new tokens, left-padded after them, so that every sequence ends
        at the last position. Returns the last ``keep`` positions' float32 logits, the cache,
        its attention mask and each sequence's cached tokens."""
        import torch
        from transformers import DynamicCache

        hits = [self.prefix.lookup(seq, limit) for seq, limit in zip(seqs, limits, strict=True)]
        cached = [len(h) * self.prefix.block_size for h in hits]
        new = [seq[c:] for seq, c in zip(seqs, cached, strict=True)]
        old_w, new_w = max(cached), max(map(len, new))
        cache = DynamicCache(config=self.model.config)
        if old_w:
            for layer in range(len(cache.layers)):
                cache.update(*(self._gathered(hits, old_w, layer, kind) for kind in ("keys", "values")), layer)
        ids = torch.tensor([[self.pad_id] * (new_w - len(n)) + n for n in new], device=self.device)
        rows = list(zip(cached, map(len, new), strict=True))
        mask = torch.tensor(
            [[0] * (old_w - c) + [1] * c + [0] * (new_w - n) + [1] * n for c, n in rows], device=self.device
        )
        positions = torch.tensor([[0] * (new_w - n) + list(range(c, c + n)) for c, n in rows], device=self.device)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            logits_to_keep=keep,
        ).logits.float()
        return logits, cache, mask, cached

    @staticmethod
    def _gathered(hits: list[list[Any]], width: int, layer: int, kind: str) -> Any:
        """One layer's cached keys or values of each row, left-padded to ``width``."""
        import torch

        some = next(getattr(h[0], kind)[layer] for h in hits if h)
        out = some.new_zeros(len(hits), some.shape[0], width, some.shape[2])
        for row, h in enumerate(hits):
            if h:
                part = torch.cat([getattr(block, kind)[layer] for block in h], dim=1)
                out[row, :, width - part.shape[1] :] = part
        return out

    def _readable(self, limit: int) -> int:
        """The cached tokens a repeat of a sequence computed earlier in the same pass reports:
        its whole blocks up to ``limit``, as an engine reads blocks computed in the same step."""
        return limit // self.prefix.block_size * self.prefix.block_size

    def _store(self, ids: list[int], cached: int, cache: Any, row: int, start: int) -> None:
        """Keep the full blocks of ``ids`` that row ``row`` of ``cache`` computed (from
        ``start`` along it, token ``cached`` of ``ids``) for later requests."""
        layers = cache.layers
        self.prefix.store(
            ids, cached, [x.keys[row, :, start:] for x in layers], [x.values[row, :, start:] for x in layers]
        )

    def _decode(self, jobs: list[tuple[list[int], GenRequest]], samples: list[_Sample]) -> None:
        """Prefill each prompt of ``samples`` once, then decode them all until each ends."""
        import torch

        # One prefill row per prompt; with the cache on, per distinct prompt: a request that
        # repeats another in the pass reads its KV, as an engine reads blocks computed in
        # the same step (and reports them cached).
        share = self.prefix.capacity > 0
        key = {j: tuple(jobs[j][0]) if share else j for j in dict.fromkeys(s.job for s in samples)}
        row_of = {k: row for row, k in enumerate(dict.fromkeys(key.values()))}
        seqs = [list(k) if share else jobs[k][0] for k in row_of]
        logits, cache, mask, cached = self._prefill(seqs, [len(seq) - 1 for seq in seqs], keep=1)
        width = mask.shape[1]
        rows: list[int] = []
        owner: dict[int, int] = {}  # row -> the request whose prompt it computed
        for s in samples:
            row = row_of[key[s.job]]
            rows.append(row)
            s.first, s.start = cached[row], width - (len(seqs[row]) - cached[row])
            s.cached = cached[row] if owner.setdefault(row, s.job) == s.job else self._readable(len(seqs[row]) - 1)
        index = torch.tensor(rows, device=self.device)  # n rows per prompt
        cache.batch_select_indices(index)
        logits, mask = logits[index, -1], mask[index]
        last = torch.tensor([len(jobs[s.job][0]) - 1 for s in samples], device=self.device)
        live = list(samples)
        while True:
            chosen = self._choose(logits, live)
            logp = torch.log_softmax(logits, -1).gather(1, chosen[:, None])[:, 0].tolist()
            for row, (s, tok, lp) in enumerate(zip(live, chosen.tolist(), logp, strict=True)):
                s.tokens.append(tok)
                s.logprobs.append(lp)  # the model's own distribution, as the engines report it
                s.finish = self._finish(s)
                if s.finish:
                    self._store(jobs[s.job][0] + s.tokens, s.first, cache, row, s.start)
            keep = [i for i, s in enumerate(live) if s.finish is None]
            if not keep:
                return
            if len(keep) < len(live):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                chosen, mask, last = chosen[index], mask[index], last[index]
                live = [live[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            last = last + 1
            logits = self.model(
                input_ids=chosen[:, None], attention_mask=mask, position_ids=last[:, None],
                past_key_values=cache, use_cache=True, logits_to_keep=1,
            ).logits[:, -1].float()

    @staticmethod
    def _choose(logits: Any, samples: list[_Sample]) -> Any:
        """Each sample's next token: greedy at temperature 0, else a draw from its own
        stream over the temperature-scaled distribution cut to its ``top_p`` nucleus
        (``logits``: float32, one row per sample)."""
        import torch

        chosen = logits.argmax(-1)
        drawn = [i for i, s in enumerate(samples) if s.generator is not None]
        if not drawn:
            return chosen
        temp = torch.tensor([samples[i].req.temperature for i in drawn], device=logits.device)[:, None]
        top_p = torch.tensor([samples[i].req.top_p for i in drawn], device=logits.device)[:, None]
        probs = torch.softmax(logits[drawn] / temp, -1)
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # the most likely token always stays
        probs = probs.scatter(1, order, sorted_p.masked_fill(outside, 0.0))
        # Exponential race: argmax p / E with E ~ Exp(1) draws from p; one draw per sample and step.
        noise = torch.stack(
            [torch.empty(probs.shape[1], device=logits.device).exponential_(generator=samples[i].generator)
             for i in drawn]
        )
        chosen[drawn] = (probs / noise).argmax(-1)
        return chosen

    def _finish(self, s: _Sample) -> str | None:
        if s.tokens[-1] in self.eos_ids:
            return "stop"
        if s.req.stop and any(self._may_end(x, s.tokens[-1]) for x in s.req.stop):
            # Only the completion's last few tokens can hold a new match (the first match
            # ends the sample, so none lies further back); a token decodes to a character
            # or more, a special one to none: a margin of two.
            window = max(len(x) for x in s.req.stop) + 2
            tail = self.decode(s.tokens[-window:])
            if any(x in tail for x in s.req.stop):
                return "stop"
        return "length" if len(s.tokens) >= s.req.max_tokens else None

    def _may_end(self, stop: str, token: int) -> bool:
        """Whether ``token`` can end a new match of ``stop``: a match ends inside the last
        token's text, so that text holds the stop's last character. Exact for stops of
        ASCII characters but a space (a token's text alone can lack its leading space, or
        hold half of a multi-byte character); any other stop is always looked for."""
        last = stop[-1]
        if last == " " or not stop.isascii():
            return True
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.decode([token])
        return last in piece

    def _score(self, jobs: list[tuple[list[int], int]]) -> list[tuple[list[float], int, int]]:
        """Log-probabilities of each job's tokens from ``start`` on, with the tokens computed
        and those read from the prefix cache. Only the last positions' logits (a pass's
        longest continuation) are computed: every sequence ends at the last position. With
        the cache on, a job that repeats another of the pass (a PRM judging the same first
        step of several samples) is computed once and reports the blocks it could read."""
        import torch

        out: list[tuple[list[float], int, int]] = [([], 0, 0)] * len(jobs)
        first = {i: i for i in range(len(jobs))}
        if self.prefix.capacity > 0:
            seen: dict[tuple[tuple[int, ...], int], int] = {}
            first = {i: seen.setdefault((tuple(seq), start), i) for i, (seq, start) in enumerate(jobs)}
        todo = sorted(set(first.values()))
        for group in self._score_batches([len(jobs[i][0]) - jobs[i][1] for i in todo]):
            part = [todo[k] for k in group]
            seqs = [jobs[i][0] for i in part]
            keep = 1 + max(len(jobs[i][0]) - jobs[i][1] for i in part)
            # The logits at a position predict the next token: the cache may hold none of the
            # positions whose logits are read, the one before ``start`` included.
            logits, cache, mask, cached = self._prefill(seqs, [jobs[i][1] - 1 for i in part], keep)
            targets = torch.tensor(  # the tokens those logits predict, ends aligned
                [[self.pad_id] * max(0, keep - 1 - len(seq)) + seq[-(keep - 1) :] for seq in seqs], device=self.device
            )
            logp = torch.log_softmax(logits[:, :-1], -1).gather(2, targets[..., None])[..., 0]
            for row, i in enumerate(part):
                seq, start = jobs[i]
                self._store(seq, cached[row], cache, row, mask.shape[1] - (len(seq) - cached[row]))
                out[i] = (logp[row, keep - 1 - (len(seq) - start) :].tolist(), len(seq) - cached[row], cached[row])
        for i, j in first.items():
            if i != j:
                seq, start = jobs[i]
                cached = self._readable(start - 1)
                out[i] = (out[j][0], len(seq) - cached, cached)
        return out

    def _score_batches(self, scored: list[int]) -> list[list[int]]:
        """Jobs grouped into forward passes by the number of tokens each scores, at most
        ``max_num_seqs`` a pass and the logits they need within ``_LOGITS_BUDGET``."""
        vocab = self.model.config.get_text_config().vocab_size
        batches: list[list[int]] = []
        for j in sorted(range(len(scored)), key=scored.__getitem__):
            last = batches[-1] if batches else []
            if last and len(last) < self.max_num_seqs and (len(last) + 1) * (scored[j] + 1) * vocab <= _LOGITS_BUDGET:
                last.append(j)
            else:
                batches.append([j])
        return batches

    # -- protocol -----------------------------------------------------------------------
    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        jobs = []
        for r in requests:
            ids = self.encode(r.prompt)
            self.check_length(ids, r.max_tokens)
            jobs.append(("gen", ids, r))
        outs = await self._batcher.submit(jobs)
        return [
            GenResult(prompt_token_ids=ids, completions=c, cached_tokens=cached, batch_id=b, engine_seconds=s)
            for (_, ids, _), (c, cached, b, s) in zip(jobs, outs, strict=True)
        ]

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        jobs = []
        for r in requests:
            prompt, cont = self.encode(r.prompt), self.encode_continuation(r.continuation)
            if not cont:
                raise BackendError("score needs a non-empty continuation")
            if not prompt:
                raise BackendError("score needs a prompt of at least one token")
            self.check_length(prompt + cont)
            jobs.append(("score", prompt + cont, len(prompt)))
        outs = await self._batcher.submit(jobs)
        return [
            ScoreResult(
                token_logprobs=lps, prompt_token_ids=ids, cached_tokens=cached, batch_id=b, engine_seconds=s
            )
            for (_, ids, _), (lps, cached, b, s) in zip(jobs, outs, strict=True)
        ]
