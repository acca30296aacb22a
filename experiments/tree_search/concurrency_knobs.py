"""64 MCTS queries at once against the same 64 one at a time, under several vLLM CPU set-ups.

    python experiments/tree_search/concurrency_knobs.py default|uni|uni_bind|bind|cohorts

default: the engines as ttc starts them (each engine's worker in its own process, both
engines' threads on core 0, core 1 left to the front end); uni: worker inside the engine
process (``distributed_executor_backend="uni"``); uni_bind: that, plus the PRM engine on
core 1 (``VLLM_CPU_OMP_THREADS_BIND``) so that policy and PRM batches could overlap;
bind: each engine on a core of its own (``cpu_cores``); cohorts: that, and each engine's
batches capped at half its largest (``max_batch``), so that half the trees expand while
the other half are judged.
Prints one JSON line; results of one session in ``concurrency_knobs.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any


async def _grade(problem: Any, answer: Any) -> bool:
    return False


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "default"
    from strategies.mcts import MCTS
    from ttc.backends.vllm import VLLMBackend
    from ttc.datasets import arith_problems
    from ttc.reference import POLICY_PATH, PRM_PATH
    from ttc.runner import run_queries
    from verifiers.prm import PRMVerifier

    kw: dict[str, Any] = {"distributed_executor_backend": "uni"} if mode.startswith("uni") else {}
    if mode == "uni_bind":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    if mode in ("bind", "cohorts"):
        kw["cpu_cores"] = "0"
    policy = VLLMBackend(str(POLICY_PATH), seed=2024, dtype="float32", **kw)
    if mode == "uni_bind":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    if mode in ("bind", "cohorts"):
        kw["cpu_cores"] = "1"
    prm = PRMVerifier(VLLMBackend(str(PRM_PATH), seed=2024, dtype="float32", **kw))
    engines = (policy, prm.backend)
    largest = {id(b): 1 for b in engines}
    for b in engines:  # record each engine's largest batch (the warm-up's) for the cohorts' cap
        run_batch = b._batcher._run_batch

        def recording(jobs: Any, batch_id: int, b: Any = b, run_batch: Any = run_batch) -> Any:
            largest[id(b)] = max(largest[id(b)], len(jobs))
            return run_batch(jobs, batch_id)

        b._batcher._run_batch = recording
    problems = arith_problems(limit=64, steps=6, seed=2024)
    mcts = MCTS(simulations=16, branching=4, parallel=4, verifier=prm)

    def wall(concurrency: int) -> float:
        t = time.perf_counter()
        asyncio.run(run_queries(problems, mcts, policy, _grade, concurrency=concurrency, seed=2024, progress=False))
        return time.perf_counter() - t

    wall(64)  # warm-up
    caps = {}
    if mode == "cohorts":  # one at a time, no batch comes near the caps
        for b in engines:
            b._batcher.max_batch = caps[b.name + (":prm" if b is prm.backend else ":policy")] = -(-largest[id(b)] // 2)
    conc, seq = wall(64), wall(1)
    result = {"mode": mode, "concurrent_s": conc, "sequential_s": seq, "speedup": seq / conc}
    print(json.dumps({**result, **({"max_batch": caps} if caps else {})}), flush=True)


if __name__ == "__main__":
    main()
