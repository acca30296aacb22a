"""Inference servers over HTTP: vLLM's or SGLang's OpenAI ``/v1/completions``, or SGLang's ``/generate``.

Prompts go as token ids, so a branch (parent ids + child ids) reaches the
server's prefix cache exactly as the strategy built it. Stop strings stay in the
output (vLLM ``include_stop_str_in_output``, SGLang ``no_stop_trim``), as with the
in-process engines. Several ``endpoints`` (replicas of one model) share the load
by least outstanding tokens; a request that meets a dead replica, a 429 or a 503
is retried with exponential backoff, on another replica where there is one. One
that the server took and did not answer within ``timeout_s`` is not: the server
may still be computing it.

Whole engine batches go in one POST, as in process, where the server takes them: SGLang's
``/generate`` takes lists (the in-process SGLang backend's own batches,
``ttc.backends.sglang``), and a vLLM server started with ttc's batch route (``--middleware
ttc.backends.vllm_route.batch_generate``) takes a list with each request's own sampling
settings and seed. Otherwise, one request per ``/v1/completions`` call.

Device time. Neither server exports an engine-busy counter (vLLM's ``/metrics``
has per-request latency histograms, which overlap under continuous batching), so
each endpoint's busy time is measured here: the time during which it holds at
least one of our requests, shared among those requests in proportion to their
tokens. ``gpu_seconds_source`` says so; it counts queueing and network time too,
and assumes nobody else uses the server.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import PositiveInt

from ttc.backends.base import Backend, BackendError, EngineUnavailable, apportion
from ttc.backends.batching import MicroBatcher, OnItsOwn
from ttc.backends.sglang import (
    Batches,
    Job,
    Served,
    account,
    batch_payload,
    generate_batched,
    prefill_payload,
    score_batched,
    shared_prompts,
)
from ttc.backends.vllm import sampling_kwargs
from ttc.backends.vllm_route import PATH as ROUTE_PATH
from ttc.registry import ConfigError
from ttc.types import Completion, GenRequest, GenResult, ScoreRequest, ScoreResult

Api = Literal["openai", "sglang"]
J = TypeVar("J")
T = TypeVar("T")
# The server did not take the request. A 500, or a proxy's 502 or 504, may come after it did.
RETRY_STATUS = {429, 503}
SCORE = {"max_tokens": 1, "temperature": 0.0, "detokenize": False}  # the batch route's settings for a score


class BusyClock:
    """One endpoint's busy time, shared among in-flight requests by weight.

    Processor sharing in O(1): ``virtual`` integrates dt / (total weight) while
    anything is in flight, so a request of weight w that ran from v0 to v1 gets
    w * (v1 - v0), and the shares add up to the busy time exactly.
    """

    def __init__(self) -> None:
        self.virtual = 0.0
        self.weight = 0.0
        self.last = time.perf_counter()
        self.busy = 0.0

    def _advance(self) -> None:
        now = time.perf_counter()
        if self.weight > 0:
            self.virtual += (now - self.last) / self.weight
            self.busy += now - self.last
        self.last = now

    def start(self, weight: float) -> float:
        self._advance()
        self.weight += weight
        return self.virtual

    def stop(self, weight: float, started: float) -> float:
        self._advance()
        self.weight = max(0.0, self.weight - weight)
        return weight * (self.virtual - started)


@dataclass
class Endpoint:
    url: str
    clock: BusyClock = field(default_factory=BusyClock)
    outstanding: float = 0.0  # estimated tokens of our requests in flight there
    failures: int = 0  # consecutive: sets how long it stays marked down
    down_until: float = 0.0
    sent: int = 0
    served: int = 0
    errors: int = 0


class ServerError(Exception):
    """A retryable answer of one endpoint (429, 503)."""


class NoEndpoint(EngineUnavailable, ConfigError):
    """No endpoint to talk to (none, a malformed URL, none answering at start). The config is
    what to fix, so ``ttc.run`` says it in one line, as its other config errors."""


class ServerTimeout(EngineUnavailable):
    """A request the server took and did not answer in time. Final: the server may still be
    computing it, so neither ``_post`` nor a ``MicroBatcher`` (job by job) sends it again."""


@dataclass
class LoopClient:
    """The HTTP client of one event loop (each ``asyncio.run`` has its own) and what closes it."""

    loop: asyncio.AbstractEventLoop
    client: Any  # httpx.AsyncClient
    limit: asyncio.Semaphore
    closer: AsyncGenerator[None, None]


class HTTPBackend(Backend):
    name = "http"
    _transport: Any = None  # tests put an httpx.MockTransport here (on a subclass: the probe uses it too)

    def __init__(
        self,
        model: str,
        seed: int = 0,
        *,
        endpoints: list[str] | None = None,
        api: Api = "openai",
        served_model_name: str | None = None,
        tokenizer: str | None = None,
        max_model_len: int | None = None,
        block_size: int | None = None,
        kv_cache_dtype: str = "auto",
        gpus_per_endpoint: int = 1,
        max_concurrency: int = 64,
        timeout_s: float = 600.0,
        max_retries: int = 6,
        backoff_s: float = 0.5,
        batch_route: bool | None = None,
        max_batch: PositiveInt | None = None,
    ) -> None:
        """Talk to running servers of ``model`` (its path or hub name gives the tokenizer and KV geometry).

        ``block_size`` is the server's prefix-cache block (null: read from vLLM's
        ``/metrics``, 1 for SGLang's radix cache); ``max_model_len`` is capped by what
        the server reports. ``batch_route``: send whole engine batches in one POST (SGLang's
        ``/generate``; ttc's route on vLLM servers, ``ttc.backends.vllm_route``): null does
        where the server can, true requires it, false sends each strategy call on its own.
        ``max_batch``: at most this many requests per merged batch (``MicroBatcher``).
        """
        from transformers import AutoConfig, AutoTokenizer

        from ttc.models import kv_geometry

        if not endpoints:
            raise NoEndpoint("endpoints: empty; give the servers' URLs, e.g. [http://127.0.0.1:8000]")
        for url in endpoints:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise NoEndpoint(f"endpoints: {url!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8000")
        self.api: Api = api
        self.endpoints = [Endpoint(u.rstrip("/")) for u in endpoints]
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.kv = kv_geometry(AutoConfig.from_pretrained(model), kv_cache_dtype)
        self.num_devices = gpus_per_endpoint
        self.seed = seed
        self.max_concurrency = max(1, max_concurrency)
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.gpu_seconds_source = "client_busy_time"
        self._batch_ids = itertools.count(1)
        self._loop_state: LoopClient | None = None
        self._label_reads = True  # vLLM's logprob_token_ids; off once a server ignores or refuses it
        self._labels: MicroBatcher[tuple[list[int], int], ScoreResult] = MicroBatcher(self._label_batch, max_batch)
        info = self._probe(served_model_name)
        self.served_model_name = served_model_name or info.get("model")
        server_len = info.get("max_model_len")
        lens = [x for x in (max_model_len, server_len) if x]
        self.max_model_len = min(lens) if lens else None
        self.block_size = block_size or info.get("block_size") or (1 if api == "sglang" else 16)
        has_route = api == "sglang" or bool(info.get("route"))
        if batch_route and not has_route:
            raise ConfigError(
                f"batch_route: true, but {endpoints[0]} has no {ROUTE_PATH}; start vLLM's server "
                "with --middleware ttc.backends.vllm_route.batch_generate (or use api: sglang on SGLang's server)"
            )
        self.uses_route = has_route and batch_route is not False
        # Results are dicts, or the exception that a request (or its whole POST) met.
        self._routed: MicroBatcher[tuple[list[int], dict[str, Any]], Any] = MicroBatcher(self._route_batch, max_batch)
        self._sglang: Batches = (
            MicroBatcher(self._sglang_batch, max_batch) if self.uses_route else OnItsOwn(self._sglang_batch)
        )

    # -- discovery -----------------------------------------------------------------------
    def _probe(self, served_model_name: str | None) -> dict[str, Any]:
        """Model name, context length and cache block from the first endpoint that answers
        (replicas of one model: the others may be down). None answering is an error now: each
        request would otherwise fail only after all its retries."""
        import httpx

        errors = []
        for ep in self.endpoints:
            try:
                with httpx.Client(base_url=ep.url, timeout=10.0, transport=self._transport) as client:
                    return probe(client, served_model_name)
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{ep.url} ({type(exc).__name__}: {' '.join(str(exc).split())})")
        raise NoEndpoint(f"endpoints: no server answered: {'; '.join(errors)}")

    # -- transport -------------------------------------------------------------------------
    async def _state(self) -> tuple[Any, asyncio.Semaphore]:
        """The client and concurrency limit of the running event loop (each ``asyncio.run`` has its own)."""
        import httpx

        loop = asyncio.get_running_loop()
        if self._loop_state is None or self._loop_state.loop is not loop:
            self.close()
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
            client = httpx.AsyncClient(limits=limits, timeout=timeout, transport=self._transport)
            closer = closed_with_its_loop(client)
            self._loop_state = LoopClient(loop, client, asyncio.Semaphore(self.max_concurrency), closer)
            await anext(closer)
        return self._loop_state.client, self._loop_state.limit

    def _pick(self, avoid: Endpoint | None, prefer: Endpoint | None = None) -> Endpoint:
        """``prefer`` if it is up, else the live endpoint with the fewest outstanding tokens, other
        than the one that just failed."""
        now = time.monotonic()
        if prefer is not None and prefer is not avoid and prefer.down_until <= now:
            return prefer
        live = [e for e in self.endpoints if e.down_until <= now] or self.endpoints
        others = [e for e in live if e is not avoid] or live
        return min(others, key=lambda e: (e.down_until > now, e.outstanding, random.random()))

    async def _post(
        self, path: str, payload: dict[str, Any], weight: float, prefer: Endpoint | None = None
    ) -> tuple[Any, float]:
        """POST with retries; the parsed body and this request's device-seconds on the server that answered."""
        import httpx

        client, limit = await self._state()
        last: Exception | None = None
        failed: Endpoint | None = None
        spent = 0.0  # device time of failed attempts is spent all the same
        async with limit:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    await asyncio.sleep(min(30.0, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random()))
                ep = self._pick(failed, prefer)
                ep.sent += 1
                ep.outstanding += weight
                mark = ep.clock.start(weight)
                try:
                    resp = await client.post(ep.url + path, json=payload)
                    if resp.status_code in RETRY_STATUS:
                        raise ServerError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                    if resp.status_code >= 400:
                        raise BackendError(f"{ep.url}{path}: HTTP {resp.status_code}: {resp.text[:300]}")
                    body = resp.json()
                except httpx.ReadTimeout as exc:
                    ep.errors += 1
                    raise ServerTimeout(
                        f"{ep.url}{path}: no answer within timeout_s={self.timeout_s:g} s (not resent: the server may "
                        "still be computing it); raise the backend's timeout_s for requests this long"
                    ) from exc
                except (httpx.TransportError, ServerError) as exc:
                    last, failed = exc, ep
                    ep.failures += 1
                    ep.errors += 1
                    # A refused or dropped connection means the replica is gone for a while (it will not
                    # finish the request); 429/503 say it is busy and did not take it. Either way, resend.
                    pause = self.backoff_s * 2 ** min(ep.failures, 6)
                    ep.down_until = time.monotonic() + (pause if isinstance(exc, httpx.TransportError) else 0.0)
                    continue
                finally:
                    ep.outstanding -= weight
                    spent += ep.clock.stop(weight, mark)
                ep.failures = 0
                ep.served += 1
                return body, spent * self.num_devices
        raise EngineUnavailable(f"{path}: no endpoint answered after {self.max_retries + 1} attempts ({last!r})")

    # -- protocol --------------------------------------------------------------------------
    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if self.api == "sglang":
            return await generate_batched(self, self._sglang, requests)
        batch_id = next(self._batch_ids)
        prompts = []
        for r in requests:
            ids = self.encode(r.prompt)
            self.check_length(ids, r.max_tokens)
            prompts.append(ids)
        pairs = zip(prompts, requests, strict=True)
        if self.uses_route:
            jobs = [(ids, route_params(r, self.one_token_stops(r.stop))) for ids, r in pairs]
            outs = await self._routed.submit(jobs)
            return [
                route_gen_result(o, r.logprobs, None if params["detokenize"] else self.decode)
                for o, r, (_, params) in zip(outs, requests, jobs, strict=True)
            ]
        return list(await asyncio.gather(*(self._generate_one(ids, r, batch_id) for ids, r in pairs)))

    async def _generate_one(self, ids: list[int], r: GenRequest, batch_id: int) -> GenResult:
        body, seconds = await self._post("/v1/completions", self._openai_gen(ids, r), len(ids) + r.n * r.max_tokens)
        result = self._openai_result(body, ids, r.logprobs)
        return result.model_copy(update={"batch_id": batch_id, "engine_seconds": seconds})

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        if self.api == "sglang":
            return await score_batched(self, self._sglang, requests)
        batch_id = next(self._batch_ids)
        seqs = []
        for r in requests:
            prompt, cont = self.encode(r.prompt), self.encode_continuation(r.continuation)
            if not cont or not prompt:
                raise BackendError("score needs a non-empty prompt and continuation")
            self.check_length(prompt + cont)
            seqs.append((prompt + cont, len(prompt)))
        if self.uses_route:
            return await self._route_scores(seqs)
        if self._label_reads and all(len(ids) - start == 1 for ids, start in seqs):
            # A server answers many small requests far slower than one large one (each
            # costs it milliseconds of CPU): judgements of all queries in flight go together.
            return await self._labels.submit(seqs)
        return list(await asyncio.gather(*(self._score_one(ids, start, batch_id) for ids, start in seqs)))

    def _split(self, items: Sequence[J]) -> list[tuple[Endpoint, list[J]]]:
        """A merged batch in one chunk per live endpoint, least loaded first, each chunk with the
        endpoint it is meant for (``_post`` goes elsewhere only if that one fails)."""
        live = [e for e in self.endpoints if e.down_until <= time.monotonic()] or self.endpoints
        live.sort(key=lambda e: e.outstanding)
        size = max(1, -(-len(items) // len(live)))
        return [(ep, list(items[i : i + size])) for ep, i in zip(live, range(0, len(items), size), strict=False)]

    async def _label_batch(self, seqs: Sequence[tuple[list[int], int]], batch_id: int) -> list[ScoreResult]:
        """One merged batch of judgements, split over the live endpoints."""
        parts = self._split(seqs)
        done = await every_part(self._score_labels(chunk, batch_id, ep) for ep, chunk in parts)
        out: list[ScoreResult] = []
        for (_, chunk), read in zip(parts, done, strict=True):
            if read is None:  # the server lacks logprob_token_ids
                read = list(await asyncio.gather(*(self._score_one(ids, start, batch_id) for ids, start in chunk)))
            out += read
        return out

    async def _score_labels(
        self, seqs: list[tuple[list[int], int]], batch_id: int, ep: Endpoint
    ) -> list[ScoreResult] | None:
        """One-token continuations (a PRM's judgement) in one request: vLLM's ``logprob_token_ids``.

        The label's log-probability is read at the next position, as the in-process
        engine does: a prefill the prefix cache serves, plus one step. prompt_logprobs
        (the fallback) computes every position over the full vocabulary and is not
        served from the cache. All prompts of the call go in one completions request;
        its usage is per request, so cached tokens and busy time are split by prompt
        length (each query's total stays exact). None: the server lacks the feature.
        """
        labels = sorted({ids[-1] for ids, _ in seqs})
        payload = self._with_model(
            {"prompt": [ids[:-1] for ids, _ in seqs], "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
             "logprob_token_ids": labels, "return_tokens_as_token_ids": True}
        )  # fmt: skip
        try:
            body, seconds = await self._post("/v1/completions", payload, sum(len(ids) for ids, _ in seqs), ep)
        except BackendError as exc:
            if "logprob_token_ids" not in str(exc):
                raise
            self._label_reads = False
            return None
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        reads = [((c.get("logprobs") or {}).get("top_logprobs") or [{}])[0] for c in choices]
        keys = [f"token_id:{ids[-1]}" for ids, _ in seqs]
        if len(reads) != len(seqs) or any(k not in r for k, r in zip(keys, reads, strict=True)):
            self._label_reads = False  # the server ignored logprob_token_ids
            return None
        weights = [len(ids) for ids, _ in seqs]
        cached = apportion(cached_of(body.get("usage")), weights)
        return [
            ScoreResult(
                token_logprobs=[float(r[k])], prompt_token_ids=ids, cached_tokens=round(c),
                batch_id=batch_id, engine_seconds=sec,
            )
            for (ids, _), k, r, c, sec in zip(seqs, keys, reads, cached, apportion(seconds, weights), strict=True)
        ]

    # -- ttc's batch route on vLLM servers ----------------------------------------------------
    async def _route_batch(self, jobs: Sequence[tuple[list[int], dict[str, Any]]], batch_id: int) -> list[Any]:
        """One engine batch, split over the live endpoints, one POST each. Never raises: a
        batch the servers did not answer comes back as that error for each of its requests."""
        parts = self._split(jobs)
        done = await asyncio.gather(*(self._route_post(c, batch_id, ep) for ep, c in parts), return_exceptions=True)
        out: list[Any] = []
        for (_, chunk), res in zip(parts, done, strict=True):
            out += res if isinstance(res, list) else [res] * len(chunk)
        return out

    async def _route_post(
        self, jobs: list[tuple[list[int], dict[str, Any]]], batch_id: int, ep: Endpoint
    ) -> list[Any]:
        payload = {"requests": [{"prompt_token_ids": ids, "sampling_params": p} for ids, p in jobs]}
        weight = sum(len(ids) + p.get("n", 1) * p.get("max_tokens", 1) for ids, p in jobs)
        body, seconds = await self._post(ROUTE_PATH, payload, weight, ep)
        results = body.get("results") or []
        if len(results) != len(jobs):
            raise BackendError(f"{ROUTE_PATH} answered {len(results)} results for {len(jobs)} requests")
        computed = [
            len(r.get("prompt_token_ids", ())) - r.get("num_cached_tokens", 0)
            + sum(len(c["token_ids"]) for c in r.get("outputs", ()))
            for r in results
        ]  # fmt: skip
        return [
            BackendError(f"{ROUTE_PATH}: {r['error']}") if "error" in r else {**r, "batch_id": batch_id, "seconds": sec}
            for r, sec in zip(results, apportion(seconds, computed), strict=True)
        ]

    async def _route_scores(self, seqs: list[tuple[list[int], int]]) -> list[ScoreResult]:
        """As the in-process engine scores: a one-token continuation (a PRM's judgement) on the
        decode path, which the prefix cache serves; longer ones by prompt log-probabilities."""
        jobs = []
        for ids, start in seqs:
            if len(ids) - start == 1:
                jobs.append((ids[:-1], {**SCORE, "logprob_token_ids": ids[-1:]}))
            else:
                jobs.append((ids, {**SCORE, "prompt_logprobs": 0}))
        outs = await self._routed.submit(jobs)
        results = []
        for (ids, start), o in zip(seqs, outs, strict=True):
            if isinstance(o, Exception):
                raise o
            if len(ids) - start == 1:
                lps = [o["outputs"][0]["logprobs"][0][str(ids[-1])]]
            else:
                lps = [o["prompt_logprobs"][i][str(ids[i])] for i in range(start, len(ids))]
            results.append(
                ScoreResult(
                    token_logprobs=[float(x) for x in lps], prompt_token_ids=ids, cached_tokens=o["num_cached_tokens"],
                    batch_id=o["batch_id"], engine_seconds=o["seconds"],
                )
            )  # fmt: skip
        return results

    async def _score_one(self, ids: list[int], start: int, batch_id: int) -> ScoreResult:
        payload = self._with_model(
            {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "return_token_ids": True}
        )
        body, seconds = await self._post("/v1/completions", payload, len(ids) + 1)
        choice = body["choices"][0]
        # prompt_logprobs: one {token_id: {logprob, ...}} per prompt position (None for the first).
        lps = [float(choice["prompt_logprobs"][i][str(ids[i])]["logprob"]) for i in range(start, len(ids))]
        return ScoreResult(
            token_logprobs=lps, prompt_token_ids=ids, cached_tokens=cached_of(body.get("usage")),
            batch_id=batch_id, engine_seconds=seconds,
        )  # fmt: skip

    # -- OpenAI completions (vLLM, SGLang) ---------------------------------------------------
    def _with_model(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.served_model_name, **payload} if self.served_model_name else payload

    def _openai_gen(self, ids: list[int], r: GenRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": ids,
            "n": r.n,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_tokens": r.max_tokens,
            "stop": r.stop or None,
            "seed": r.seed,
            "logprobs": 0 if r.logprobs else None,
            # vLLM's extensions; SGLang's server reads no_stop_trim instead.
            "include_stop_str_in_output": True,
            "no_stop_trim": True,
            "return_token_ids": True,
            "skip_special_tokens": True,
        }
        return self._with_model({k: v for k, v in payload.items() if v is not None})

    def _openai_result(self, body: dict[str, Any], ids: list[int], want_logprobs: bool) -> GenResult:
        completions = []
        for choice in sorted(body["choices"], key=lambda c: c.get("index", 0)):
            text = choice.get("text") or ""
            token_ids = choice.get("token_ids")
            if token_ids is None:  # a server without return_token_ids: re-tokenize (may differ at edges)
                token_ids = self.encode_continuation(text)
            lps = None
            if choice.get("logprobs"):
                lps = [float(x) for x in choice["logprobs"].get("token_logprobs") or []]
            completions.append(
                Completion(
                    token_ids=list(token_ids),
                    text=text,
                    cumulative_logprob=math.fsum(lps) if lps else None,
                    logprobs=lps if want_logprobs else None,
                    finish_reason=str(choice.get("finish_reason") or "stop"),
                )
            )
        return GenResult(prompt_token_ids=ids, cached_tokens=cached_of(body.get("usage")), completions=completions)

    # -- SGLang's /generate: the in-process SGLang backend's batches, over HTTP --------------------
    async def _sglang_batch(self, jobs: Sequence[Job], batch_id: int) -> list[Served]:
        """One engine batch, split over the live endpoints; each part's shared prompts are
        prefilled first on the endpoint that then serves it (see ``shared_prompts``)."""
        parts = await every_part(self._sglang_post(chunk, batch_id, ep) for ep, chunk in self._split(jobs))
        return [served for part in parts for served in part]

    async def _sglang_post(self, jobs: list[Job], batch_id: int, ep: Endpoint) -> list[Served]:
        weight = sum(len(ids) + p.get("max_new_tokens", 0) for ids, p, _ in jobs)
        shared, warm, seconds = shared_prompts(jobs), [], 0.0
        if shared:
            warm, seconds = await self._post("/generate", prefill_payload(shared), sum(map(len, shared)), ep)
        outs, more = await self._post("/generate", batch_payload(jobs), weight, ep)
        return account(jobs, outs, dict(zip(map(tuple, shared), warm, strict=True)), seconds + more, batch_id)

    def close(self) -> None:
        """Close the client on the loop that owns it: now if that loop is idle, soon if it runs.
        A closed loop closed it as it shut down (``closed_with_its_loop``); an idle loop while
        another runs here closes it when it next runs (asyncio finalizes the dropped closer there)."""
        state, self._loop_state = self._loop_state, None
        if state is None or state.loop.is_closed():
            return
        if state.loop.is_running():
            asyncio.run_coroutine_threadsafe(state.closer.aclose(), state.loop)
        elif not loop_running_here():
            state.loop.run_until_complete(state.closer.aclose())


async def closed_with_its_loop(client: Any) -> AsyncGenerator[None, None]:
    """Waits at its ``yield`` for the loop's life. The loop holds it, and as it shuts down
    (``asyncio.run``: ``shutdown_asyncgens``) resumes it, to close the client's keep-alive
    connections on the loop that owns them; ``HTTPBackend.close`` resumes it sooner."""
    try:
        yield
    finally:
        await client.aclose()


def loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def probe(client: Any, served_model_name: str | None) -> dict[str, Any]:
    """What one server says of itself: vLLM exports its block size in ``/metrics``, SGLang its
    page size in ``/get_server_info``. ValueError: it answered, but not as either does."""
    models = client.get("/v1/models")
    try:
        listing = models.json() if models.is_success else {}  # a server without the listing: no card
    except ValueError:
        listing = None
    cards = (listing.get("data") or []) if isinstance(listing, dict) else None
    if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
        raise ValueError(f"/v1/models answered {models.text[:200]!r}, not an OpenAI model list")
    card = next((m for m in cards if m.get("id") == served_model_name), cards[0] if cards else {})
    info = {"model": card.get("id"), "max_model_len": card.get("max_model_len")}
    metrics = client.get("/metrics")
    info["block_size"] = vllm_block_size(metrics.text) if metrics.is_success else None
    info["route"] = json_object(client.get(ROUTE_PATH)).get("route") == ROUTE_PATH
    if info["block_size"] is None:
        facts = json_object(client.get("/get_server_info"))
        info["block_size"] = facts.get("page_size")
        info["max_model_len"] = info["max_model_len"] or facts.get("context_length")
    return info


def json_object(resp: Any) -> dict[str, Any]:
    """A successful answer's JSON object; {} for anything else (a route or page the server lacks)."""
    try:
        body = resp.json() if resp.is_success else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def every_part(parts: Iterable[Awaitable[T]]) -> list[T]:
    """The results of a batch's parts (one per endpoint), or the first part's error, raised
    once every part has ended: a batch fails whole, and no part of it goes on retrying in the
    background for a batch that has already failed."""
    done = await asyncio.gather(*parts, return_exceptions=True)
    for d in done:
        if isinstance(d, BaseException):
            raise d
    return done  # type: ignore[return-value]


def route_params(r: GenRequest, one_token_stops: list[int]) -> dict[str, Any]:
    """``SamplingParams`` keywords for the batch route: the in-process backend's own settings."""
    return {k: v for k, v in sampling_kwargs(r, one_token_stops).items() if v is not None}


def route_gen_result(out: Any, want_logprobs: bool, decode: Callable[[list[int]], str] | None = None) -> GenResult:
    """``decode``: the text from the token ids, where the server did not detokenize."""
    if isinstance(out, Exception):
        raise out
    completions = []
    for c in out["outputs"]:
        lps = None
        if want_logprobs and c.get("logprobs") is not None:
            lps = [float(step[str(t)]) for step, t in zip(c["logprobs"], c["token_ids"], strict=True)]
        completions.append(
            Completion(
                token_ids=list(c["token_ids"]), text=decode(c["token_ids"]) if decode else c["text"],
                cumulative_logprob=c.get("cumulative_logprob"), logprobs=lps, finish_reason=c["finish_reason"],
            )
        )  # fmt: skip
    return GenResult(
        prompt_token_ids=out["prompt_token_ids"], cached_tokens=out["num_cached_tokens"], completions=completions,
        batch_id=out["batch_id"], engine_seconds=out["seconds"],
    )  # fmt: skip


def cached_of(usage: dict[str, Any] | None) -> int:
    details = (usage or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def vllm_block_size(metrics: str) -> int | None:
    """The KV block size from vLLM's ``cache_config_info`` Prometheus gauge, if exported."""
    match = re.search(r'vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', metrics)
    return int(match.group(1)) if match else None
