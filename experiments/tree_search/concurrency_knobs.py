"""64 MCTS queries at once against the same 64 one at a time, under several vLLM CPU set-ups.

    python experiments/tree_search/concurrency_knobs.py default|bind|cohorts|async [REPEATS]
    python experiments/tree_search/concurrency_knobs.py ceiling
    python experiments/tree_search/concurrency_knobs.py cohort_count [REPEATS]
    python experiments/tree_search/concurrency_knobs.py leaf_parallel [REPEATS]

default: the engines as ttc starts them (vLLM's binding puts both engines' workers on
core 0, leaving core 1 to the front end); bind: each engine on a core of its own
(``cpu_cores``); cohorts: that, and the queries dealt into two cohorts that no engine
batch mixes (``run_queries(cohorts=2)``), so that half the trees expand while the other
half are judged; async: cohorts with vLLM's asynchronous scheduler (the engine core
schedules the next step while the worker computes this one), which vLLM's CPU platform
turns off ("not required on CPU") and this mode turns back on.

cohort_count: the concurrent run alone in 2, 3 and 4 cohorts (cores as in ``cohorts``),
alternating, REPEATS rounds: whether more, smaller waves overlap the engines better.

leaf_parallel: the pair of runs (cores and cohorts as in ``cohorts``) for MCTS with 1, 2
and 4 leaves per wave (``parallel``; 1 is textbook MCTS, each simulation selecting with
every earlier one's value backed up), alternating, REPEATS rounds, with each run's
accuracy: how much of what concurrency buys depends on the batching each query already
does on its own.

ceiling: what batching alone buys each engine on this machine, the bound on any of the
above: tokens per second of 512 sequences against 16 (one query's MCTS wave), for the
policy (48-token steps) and for the PRM (judging a step after each of as many prompts).

Beside the two wall times, the concurrent run is taken apart: each engine's busy
seconds and steps, the matrix-multiply work its computed tokens need (from the model's
config), and the CPU-seconds of every process (the front end, each engine's scheduler,
each worker). With REPEATS, the pair of runs is repeated that many times, one after the
other, and the median of the pairs' ratios is reported. Prints one JSON line; results of
one session in ``concurrency_knobs.json``. (vLLM on CPU runs its worker in a process of
its own whatever ``distributed_executor_backend`` says, so that knob is not here.)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import psutil


async def _grade(problem: Any, answer: Any) -> bool:
    return False


def matmul_flops_per_token(cfg: Any) -> int:
    """Multiply-add work of one token through a Llama-style decoder's weights (attention's
    own products and the output head left out)."""
    h, hd = cfg.hidden_size, getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * cfg.intermediate_size
    return 2 * cfg.num_hidden_layers * per_layer


def one_core_gflops(m: int = 512) -> float:
    """GFLOP/s of one thread multiplying a batch of ``m`` token rows by a reference-model-sized
    weight (the engines' biggest batches are about this many rows)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, w = torch.randn(m, 192), torch.randn(192, 768)
        for _ in range(20):
            a @ w
        n, t = 200, time.perf_counter()
        for _ in range(n):
            a @ w
        return 2 * m * 192 * 768 * n / (time.perf_counter() - t) / 1e9
    finally:
        torch.set_num_threads(threads)


def cpu_seconds() -> dict[str, float]:
    """CPU-seconds so far of this process and every process under it, by role."""
    out: dict[str, float] = {}
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            name, t = " ".join(p.cmdline()), p.cpu_times()
        except psutil.Error:
            continue
        role = "worker" if "Worker" in name else "engine_core" if "EngineCore" in name else "other"
        role = "front_end" if p.pid == psutil.Process().pid else role
        out[f"{role}:{p.pid}"] = t.user + t.system
    return out


def ceiling(policy: Any, prm: Any) -> dict[str, Any]:
    """Tokens per second at 16 and at 512 sequences, each batch of fresh prompts."""
    from vllm import SamplingParams, TokensPrompt

    from ttc.datasets import arith_problems
    from ttc.types import ScoreRequest

    fresh = iter(arith_problems(limit=4000, steps=6, seed=99))

    def generate(seqs: int) -> float:
        prompts = [TokensPrompt(prompt_token_ids=policy.encode(next(fresh).prompt)) for _ in range(seqs // 4)]
        params = SamplingParams(n=4, temperature=1.0, max_tokens=48, ignore_eos=True, seed=1)
        t = time.perf_counter()
        outs = policy.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / (time.perf_counter() - t)

    def judge(seqs: int) -> float:
        reqs = [ScoreRequest(prompt=next(fresh).prompt + "12+34=46\n", continuation="<good>") for _ in range(seqs)]
        t = time.perf_counter()
        results = asyncio.run(prm.score(reqs))
        return sum(len(r.prompt_token_ids) - r.cached_tokens for r in results) / (time.perf_counter() - t)

    out: dict[str, Any] = {}
    for name, run in (("policy", generate), ("prm", judge)):
        run(512)  # warm-up
        small, large = statistics.median(run(16) for _ in range(3)), run(512)
        out[name] = {"tok_s_16": round(small), "tok_s_512": round(large), "gain": round(large / small, 2)}
    return out


def leaf_parallel(wall: Any, repeats: int) -> dict[str, Any]:
    """Pairs of runs (64 at once, then one at a time) for 1, 2 and 4 leaves per wave; the
    answers are graded after each run, outside its wall time."""
    from verifiers.math import equivalent

    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 4: []}
    for _ in range(repeats):
        for parallel, pairs in runs.items():
            pair = {}
            for label, concurrency in (("concurrent", 64), ("one_at_a_time", 1)):
                seconds, records = wall(concurrency, parallel=parallel)
                pair[label] = {
                    "wall_s": round(seconds, 2),
                    "accuracy": sum(equivalent(r["gold"], r["answer"]) for r in records if r["answer"]) / len(records),
                    "generated_tokens": round(statistics.mean(r["generated_tokens"] for r in records), 1),
                }
            pair["speedup"] = round(pair["one_at_a_time"]["wall_s"] / pair["concurrent"]["wall_s"], 2)
            pairs.append(pair)
            print(json.dumps({"parallel": parallel, **pair}), flush=True)
    return {
        str(parallel): {
            "concurrent_s": statistics.median(p["concurrent"]["wall_s"] for p in pairs),
            "one_at_a_time_s": statistics.median(p["one_at_a_time"]["wall_s"] for p in pairs),
            "speedup": statistics.median(p["speedup"] for p in pairs),
            "pairs": pairs,
        }
        for parallel, pairs in runs.items()
    }


def keep_async_scheduling() -> None:
    """Leave vLLM's async scheduler on for the engines this process starts: their config is
    built here, and the CPU platform's config hook is what turns it off."""
    from vllm.platforms.cpu import CpuPlatform

    turn_off = CpuPlatform.check_and_update_config.__func__

    def keep_on(cls: Any, vllm_config: Any) -> None:
        turn_off(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = True

    CpuPlatform.check_and_update_config = classmethod(keep_on)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "default"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    modes = ("default", "bind", "cohorts", "async", "ceiling", "cohort_count", "leaf_parallel")
    if mode not in modes:
        raise SystemExit(f"mode must be one of {', '.join(modes)} (got {mode!r})")
    if mode == "async":
        keep_async_scheduling()
    from strategies.mcts import MCTS
    from ttc.backends.vllm import VLLMBackend
    from ttc.datasets import arith_problems
    from ttc.reference import POLICY_PATH, PRM_PATH
    from ttc.runner import run_queries
    from verifiers.prm import PRMVerifier

    own = mode != "default"
    policy = VLLMBackend(str(POLICY_PATH), seed=2024, dtype="float32", cpu_cores="0" if own else None)
    prm = PRMVerifier(VLLMBackend(str(PRM_PATH), seed=2024, dtype="float32", cpu_cores="1" if own else None))
    engines = {"policy": policy, "prm": prm.backend}
    if mode == "ceiling":
        print(json.dumps({"mode": mode, **ceiling(policy, prm.backend)}), flush=True)
        return
    busy = dict.fromkeys(engines, 0.0)
    steps = dict.fromkeys(engines, 0)
    for name, b in engines.items():
        run_batch, engine = b._batcher._run_batch, b.llm.llm_engine
        step = engine.step

        def recording(jobs: Any, batch_id: int, name: str = name, run_batch: Any = run_batch) -> Any:
            t = time.perf_counter()
            try:
                return run_batch(jobs, batch_id)
            finally:
                busy[name] += time.perf_counter() - t

        def counting(name: str = name, step: Any = step) -> Any:
            steps[name] += 1
            return step()

        b._batcher._run_batch, engine.step = recording, counting
    problems = arith_problems(limit=64, steps=6, seed=2024)
    cohorts = 2 if mode in ("cohorts", "async", "cohort_count", "leaf_parallel") else 1

    def wall(concurrency: int, split: int = cohorts, parallel: int = 2) -> tuple[float, list[dict[str, Any]]]:
        mcts = MCTS(simulations=16, branching=4, parallel=parallel, verifier=prm)
        t = time.perf_counter()
        records = asyncio.run(
            run_queries(
                problems, mcts, policy, _grade, concurrency=concurrency, cohorts=split, seed=2024, progress=False
            )
        )
        return time.perf_counter() - t, records

    wall(64)  # warm-up
    if mode == "leaf_parallel":
        print(json.dumps({"mode": mode, **leaf_parallel(wall, repeats)}), flush=True)
        return
    if mode == "cohort_count":
        walls: dict[int, list[float]] = {2: [], 3: [], 4: []}
        for _ in range(repeats):
            for split in walls:
                walls[split].append(round(wall(64, split)[0], 2))
        medians = {c: statistics.median(w) for c, w in walls.items()}
        print(json.dumps({"mode": mode, "concurrent_s": medians, "runs": walls}), flush=True)
        return
    for name in engines:
        busy[name], steps[name] = 0.0, 0
    cpu_before = cpu_seconds()
    conc, records = wall(64)
    cpu = {k: round(v - cpu_before.get(k, 0.0), 2) for k, v in cpu_seconds().items()}
    computed = {
        "policy": sum(r["computed_prefill_tokens"] + r["generated_tokens"] for r in records),
        "prm": sum(r["verifier_tokens"] - r["verifier_cached_tokens"] for r in records),
    }
    flops = {
        name: matmul_flops_per_token(b.llm.llm_engine.vllm_config.model_config.hf_config) for name, b in engines.items()
    }
    concurrent_run = {
        name: {
            "busy_s": round(busy[name], 2),
            "steps": steps[name],
            "computed_tokens": computed[name],
            "matmul_gflop": round(computed[name] * flops[name] / 1e9, 1),
        }
        for name in engines
    }
    pairs = [(conc, wall(1)[0])]
    for _ in range(repeats - 1):
        pairs.append((wall(64)[0], wall(1)[0]))
    time.sleep(2)  # the engines' readers stop polling a second after their last message
    rate = one_core_gflops()
    for run in concurrent_run.values():
        run["matmul_s_one_core"] = round(run["matmul_gflop"] / rate, 2)
    result = {
        "mode": mode,
        "async_scheduling": bool(policy.llm.llm_engine.vllm_config.scheduler_config.async_scheduling),
        "concurrent_s": statistics.median(c for c, _ in pairs),
        "sequential_s": statistics.median(s for _, s in pairs),
        "speedup": statistics.median(s / c for c, s in pairs),  # of each pair's ratio
        **({"pairs": [[round(c, 2), round(s, 2)] for c, s in pairs]} if repeats > 1 else {}),
    }
    print(
        json.dumps({**result, "one_core_gflops": round(rate, 1), "concurrent_run": concurrent_run, "cpu_seconds": cpu}),
        flush=True,
    )


if __name__ == "__main__":
    main()
