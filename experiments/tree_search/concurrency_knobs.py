"""64 MCTS queries at once against the same 64 one at a time, under three vLLM CPU set-ups.

    python experiments/tree_search/concurrency_knobs.py default|uni|uni_bind

default: the engines as ttc starts them (each engine's worker in its own process, both
engines' threads on core 0, core 1 left to the front end); uni: worker inside the engine
process (``distributed_executor_backend="uni"``); uni_bind: that, plus the PRM engine on
core 1 (``VLLM_CPU_OMP_THREADS_BIND``) so that policy and PRM batches could overlap.
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

    kw = {"distributed_executor_backend": "uni"} if mode.startswith("uni") else {}
    if mode == "uni_bind":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    policy = VLLMBackend(str(POLICY_PATH), seed=2024, dtype="float32", **kw)
    if mode == "uni_bind":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    prm = PRMVerifier(VLLMBackend(str(PRM_PATH), seed=2024, dtype="float32", **kw))
    problems = arith_problems(limit=64, steps=6, seed=2024)
    mcts = MCTS(simulations=16, branching=4, parallel=4, verifier=prm)

    def wall(concurrency: int) -> float:
        t = time.perf_counter()
        asyncio.run(run_queries(problems, mcts, policy, _grade, concurrency=concurrency, seed=2024, progress=False))
        return time.perf_counter() - t

    wall(64)  # warm-up
    conc, seq = wall(64), wall(1)
    print(json.dumps({"mode": mode, "concurrent_s": conc, "sequential_s": seq, "speedup": seq / conc}), flush=True)


if __name__ == "__main__":
    main()
