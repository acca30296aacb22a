"""SGLang backend on its real offline engine (``sglang.Engine``), in its own venv (.venv-sglang).

Requests from all in-flight queries are merged into one ``Engine.generate``
call per batch, prompts as token ids, so the radix cache serves every shared
prefix, token by token (``block_size`` = 1). A request for ``n`` samples is
sent as ``n`` copies: SGLang's own ``n`` must be equal across a batch. The module-level
functions below build those batches and read their outputs; the HTTP backend sends the
same batches to SGLang's server, whose ``/generate`` takes the same lists.

Seeds. Per-request ``sampling_seed`` only takes effect with SGLang's
deterministic inference on (``enable_deterministic_inference``, which refuses
the CPU's ``torch_native`` attention); otherwise the engine-wide ``random_seed``
alone holds, and a run repeats only as a whole, in the same batch order.

On a CPU SGLang needs its CPU engine (``SGLANG_USE_CPU_ENGINE=1``) and CPU
kernels; docs/backends.md says how the tests run it without them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import PositiveInt

from ttc.backends.base import Backend, BackendError, apportion
from ttc.backends.batching import MicroBatcher, OnItsOwn
from ttc.backends.cpu import CpuCoreSet, check_core_set, on_cpu, started_on
from ttc.types import Completion, GenRequest, GenResult, ScoreRequest, ScoreResult

# One engine request: token ids, sampling params, and where its logprobs start (None: no logprobs).
Job = tuple[list[int], dict[str, Any], int | None]
# Its output, batch id, device-seconds, and the prompt tokens the cache held before it.
Served = tuple[dict[str, Any], int, float, int]
# Where jobs go: merged with other coroutines' into engine batches, or each call on its own.
Batches = MicroBatcher[Job, Served] | OnItsOwn[Job, Served]


def build_engine(model: str, seed: int = 0, cpu_cores: str | int | None = None, **engine: Any) -> Any:
    """Start ``sglang.Engine`` with the radix cache on; on a CPU, its PyTorch-native path,
    its processes on ``cpu_cores`` (SGLang's own binding needs CPU kernels that its PyPI
    build lacks, so each engine would run PyTorch threads on every core)."""
    import sglang

    if cpu_cores is not None:
        check_core_set(cpu_cores)  # a bad setting fails here on any machine, though it binds on CPUs only
    settings: dict[str, Any] = dict(model_path=model, random_seed=seed, log_level="error")
    if on_cpu():
        if os.environ.get("SGLANG_USE_CPU_ENGINE") != "1":
            raise BackendError(
                "sglang on a machine without a GPU needs SGLANG_USE_CPU_ENGINE=1 and CPU kernels; see docs/backends.md"
            )
        # CUDA graphs and the GPU attention kernels do not exist here; the default memory
        # fraction would size the KV pool from host RAM (gigabytes, seconds of start-up).
        # An idle scheduler busy-polls a core: on a few cores, an idle PRM engine would take
        # one from the policy's (and the policy's from the PRM's while it judges).
        settings.update(device="cpu", attention_backend="torch_native", disable_cuda_graph=True, sleep_on_idle=True)
        settings["max_total_tokens"] = engine.pop("max_total_tokens", None) or 65536
    settings.update({k: v for k, v in engine.items() if v is not None})
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # sglang.Engine takes the calling thread's event loop, so two engines of one process
        # (a policy and its PRM) would share one and could not serve batches at once from
        # two threads (two cohorts): each gets a loop of its own.
        asyncio.set_event_loop(asyncio.new_event_loop())
        with started_on(cpu_cores if on_cpu() else None):
            return sglang.Engine(**settings)
    raise BackendError("start the sglang backend outside a running event loop (its engine owns one)")


class SGLangBackend(Backend):
    name = "sglang"

    def __init__(
        self,
        model: str,
        seed: int = 0,
        llm: Any = None,
        *,
        max_model_len: int | None = None,
        dtype: str | None = None,
        kv_cache_dtype: str = "auto",
        tp_size: int = 1,
        pp_size: int = 1,
        dp_size: int = 1,
        mem_fraction_static: float | None = None,
        max_total_tokens: int | None = None,
        max_running_requests: int | None = None,
        schedule_policy: str | None = None,
        nnodes: int = 1,
        node_rank: int = 0,
        dist_init_addr: str | None = None,
        enable_deterministic_inference: bool = False,
        cpu_cores: CpuCoreSet | None = None,
        max_batch: PositiveInt | None = None,
    ) -> None:
        """Start ``sglang.Engine`` for ``model`` (or wrap an existing engine as ``llm``).

        ``tp_size`` x ``pp_size`` x ``dp_size`` GPUs (over ``nnodes`` nodes) serve one engine;
        ``max_model_len`` is SGLang's ``context_length``; ``cpu_cores`` (CPU only): the cores
        the engine's processes compute on (null: all this process may use); ``max_batch``: at
        most this many requests per engine batch (``MicroBatcher``).
        """
        from transformers import AutoConfig

        from ttc.models import kv_geometry

        if llm is None:
            devices = tp_size * pp_size * dp_size
            if not on_cpu() and nnodes == 1:
                import torch

                if devices > torch.cuda.device_count():
                    raise BackendError(
                        f"sglang: tp_size*pp_size*dp_size = {devices} GPUs, {torch.cuda.device_count()} visible"
                    )
            llm = build_engine(
                model,
                seed=seed,
                context_length=max_model_len,
                dtype=dtype,
                kv_cache_dtype=kv_cache_dtype,
                tp_size=tp_size,
                pp_size=pp_size,
                dp_size=dp_size,
                mem_fraction_static=mem_fraction_static,
                max_total_tokens=max_total_tokens,
                max_running_requests=max_running_requests,
                schedule_policy=schedule_policy,
                nnodes=nnodes,
                node_rank=node_rank,
                dist_init_addr=dist_init_addr,
                enable_deterministic_inference=enable_deterministic_inference or None,
                cpu_cores=cpu_cores,
            )
            # SGLang's exit hook kills every child of this process, multiprocessing's resource
            # tracker too (Python then reports its loss at exit); ours stops this engine's only.
            atexit.unregister(llm.shutdown)
            atexit.register(self.close)
        self.llm = llm
        self._closed = False
        args = llm.server_args
        self.tokenizer = llm.tokenizer_manager.tokenizer
        hf_config = AutoConfig.from_pretrained(args.model_path)
        self.max_model_len = int(llm.tokenizer_manager.model_config.context_len)
        # The radix cache matches token by token; a paged pool only caches whole pages.
        self.block_size = max(1, int(args.page_size or 1))
        self.num_devices = args.tp_size * args.pp_size * args.dp_size
        # KV "auto" is the dtype the engine computes in, which may differ from the checkpoint's.
        compute_dtype = str(llm.tokenizer_manager.model_config.dtype).removeprefix("torch.")
        kv_dtype = str(args.kv_cache_dtype)
        self.kv = kv_geometry(hf_config, compute_dtype if kv_dtype == "auto" else kv_dtype)
        self.seed = seed
        self._batcher: MicroBatcher[Job, Served] = MicroBatcher(self._run, max_batch)

    # -- engine side (worker thread) ------------------------------------------------------
    def _run(self, jobs: Sequence[Job], batch_id: int) -> list[Served]:
        """One engine batch (see ``shared_prompts`` for the prefill that goes first)."""
        start = time.perf_counter()
        # The engine runs its own event loop (``build_engine``) to completion in this
        # thread; the batcher never runs two batches at once, so that loop is never re-entered.
        shared = shared_prompts(jobs)
        warm = self.llm.generate(**prefill_payload(shared)) if shared else []
        outs = self.llm.generate(**batch_payload(jobs))
        busy = (time.perf_counter() - start) * self.num_devices
        return account(jobs, outs, dict(zip(map(tuple, shared), warm, strict=True)), busy, batch_id)

    # -- protocol ---------------------------------------------------------------------------
    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return await generate_batched(self, self._batcher, requests)

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return await score_batched(self, self._batcher, requests)

    def close(self) -> None:
        """Stop this engine's processes, and only them.

        ``Engine.shutdown`` kills every child of the calling process, so closing one
        engine (a PRM's) would take down another (the policy's), whose watchdog then
        kills the whole process. Its own pids come from ``get_all_child_pids``. An engine
        this backend started is closed this way at exit too, in place of SGLang's hook.
        """
        import psutil

        if self._closed:  # the pids may belong to other processes by now
            return
        self._closed = True
        watchdog = getattr(self.llm.tokenizer_manager, "_subprocess_watchdog", None)
        if watchdog is not None:
            watchdog.stop()  # our processes are about to die on purpose
        procs = []
        for pid in self.llm.get_all_child_pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                procs += [proc, *proc.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=30)
        self._close_loop()

    def _close_loop(self) -> None:
        """End the tasks the engine left on its own event loop (``build_engine``): left
        pending, each is logged as destroyed when the process exits."""
        loop = self.llm.loop
        if loop.is_running() or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # called from inside another running loop: leave it
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()


# -- SGLang's batched generate: shared by the in-process engine and the server's /generate ------


def generate_jobs(backend: Backend, requests: list[GenRequest]) -> tuple[list[Job], list[list[int]]]:
    """One job per sample (a request for ``n`` is ``n`` copies: SGLang's ``n`` must be equal
    across a batch), and each request's prompt ids."""
    jobs: list[Job] = []
    prompts = []
    for r in requests:
        ids = backend.encode(r.prompt)
        backend.check_length(ids, r.max_tokens)
        prompts.append(ids)
        for i in range(r.n):
            params: dict[str, Any] = {
                "temperature": r.temperature,
                "top_p": r.top_p,
                "max_new_tokens": r.max_tokens,
                "stop": r.stop or None,
                "no_stop_trim": True,
            }
            if r.seed is not None:
                params["sampling_seed"] = r.seed + i  # distinct copies when deterministic inference is on
            jobs.append((ids, params, len(ids) if r.logprobs else None))
    return jobs, prompts


async def generate_batched(backend: Backend, batcher: Batches, requests: list[GenRequest]) -> list[GenResult]:
    jobs, prompts = generate_jobs(backend, requests)
    outs = await batcher.submit(jobs)
    results, k = [], 0
    for r, ids in zip(requests, prompts, strict=True):
        mine, k = outs[k : k + r.n], k + r.n
        results.append(
            GenResult(
                prompt_token_ids=ids,
                cached_tokens=min((c for _, _, _, c in mine), default=0),
                completions=[sglang_completion(o, backend.decode, r.logprobs) for o, _, _, _ in mine],
                batch_id=mine[0][1] if mine else 0,
                engine_seconds=sum(s for _, _, s, _ in mine),
            )
        )
    return results


async def score_batched(backend: Backend, batcher: Batches, requests: list[ScoreRequest]) -> list[ScoreResult]:
    jobs: list[Job] = []
    for r in requests:
        prompt, cont = backend.encode(r.prompt), backend.encode_continuation(r.continuation)
        if not cont or not prompt:
            raise BackendError("score needs a non-empty prompt and continuation")
        ids = prompt + cont
        backend.check_length(ids)
        # A prefill only. SGLang leaves the logprob at logprob_start_len itself empty,
        # so the span starts one token early.
        jobs.append((ids, {"max_new_tokens": 0, "temperature": 0.0}, len(prompt) - 1))
    outs = await batcher.submit(jobs)
    results = []
    for (ids, _, first), (o, b, s, c) in zip(jobs, outs, strict=True):
        assert first is not None
        results.append(
            ScoreResult(
                token_logprobs=input_logprobs(o["meta_info"], len(ids) - first - 1),
                prompt_token_ids=ids,
                cached_tokens=c,
                batch_id=b,
                engine_seconds=s,
            )
        )
    return results


def batch_payload(jobs: Sequence[Job]) -> dict[str, Any]:
    """``Engine.generate``'s keywords, and the JSON body of the server's ``/generate``, for a batch."""
    return {
        "input_ids": [ids for ids, _, _ in jobs],
        "sampling_params": [params for _, params, _ in jobs],
        "return_logprob": [lp is not None for _, _, lp in jobs],
        "logprob_start_len": [lp if lp is not None else -1 for _, _, lp in jobs],
    }


def shared_prompts(jobs: Sequence[Job]) -> list[list[int]]:
    """The prompts a batch generates from more than once (n copies, or siblings).

    SGLang schedules copies of a prompt that is not cached yet into one prefill
    batch, and each computes it (bar its in-batch heuristic, for long shared prefixes
    only); SGLang's ``n`` and its frontend's ``fork`` prefill the prefix first for the
    same reason. Prefilled on their own first, every copy finds them in the radix cache.
    """
    counts = Counter(tuple(ids) for ids, params, _ in jobs if params.get("max_new_tokens", 1) > 0)
    return [list(k) for k, c in counts.items() if c > 1]


def prefill_payload(prompts: list[list[int]]) -> dict[str, Any]:
    return {"input_ids": prompts, "sampling_params": [{"max_new_tokens": 0} for _ in prompts]}


def account(
    jobs: Sequence[Job], outs: list[dict[str, Any]], warm: dict[tuple[int, ...], Any], busy: float, batch_id: int
) -> list[Served]:
    """Each job's output, batch id, share of the busy time (by tokens computed), and the
    prompt tokens the cache held before it; ``warm``: the prefill outputs of ``shared_prompts``."""
    if len(outs) != len(jobs):
        raise BackendError(f"sglang answered {len(outs)} outputs for {len(jobs)} requests")
    computed, cached_before, charged = [], [], set()
    for (ids, _, _), o in zip(jobs, outs, strict=True):
        meta, key = o["meta_info"], tuple(ids)
        work = meta["prompt_tokens"] - (meta.get("cached_tokens") or 0) + meta["completion_tokens"]
        hit = int(meta.get("cached_tokens") or 0)
        if key in warm:  # the cache as the prefill found it; its work goes to the first copy
            prefill = warm[key]["meta_info"]
            hit = int(prefill.get("cached_tokens") or 0)
            if key not in charged:
                work += prefill["prompt_tokens"] - hit
                charged.add(key)
        computed.append(work)
        cached_before.append(hit)
    shares = apportion(busy, computed)
    return [(o, batch_id, s, c) for o, s, c in zip(outs, shares, cached_before, strict=True)]


def sglang_completion(out: dict[str, Any], decode: Callable[[list[int]], str], want_logprobs: bool) -> Completion:
    """A ``Completion`` from one SGLang output (the engine's and the server's have one shape)."""
    meta = out["meta_info"]
    token_ids = list(out.get("output_ids") or [])
    lps = [float(e[0]) for e in meta.get("output_token_logprobs") or []]
    finish = meta.get("finish_reason") or {}
    reason = finish.get("type", "stop") if isinstance(finish, dict) else str(finish)
    return Completion(
        token_ids=token_ids,
        text=decode(token_ids),
        cumulative_logprob=math.fsum(lps) if lps else None,
        logprobs=lps if want_logprobs and lps else None,
        finish_reason=str(reason),
    )


def input_logprobs(meta: dict[str, Any], count: int) -> list[float]:
    """The last ``count`` prompt-token log-probabilities of an SGLang output's ``meta_info``
    (entries are ``[logprob, token_id, text]``)."""
    entries = (meta.get("input_token_logprobs") or [])[-count:] if count else []
    if len(entries) != count or any(e[0] is None for e in entries):
        raise BackendError(f"sglang returned {len(entries)} usable log-probabilities for {count} tokens")
    return [float(e[0]) for e in entries]
