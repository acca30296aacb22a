"""The transformers backend's prefix cache, on against off: same process.

    python experiments/bench/hf_prefix_cache.py [--problems 32] [--steps 6] [--repeats 2]

PRM beam search (n=8, width 4), MCTS (the shipped defaults: 16 simulations, branching 4,
two leaves per wave) and PRM-weighted Best-of-16 (every sample's steps judged: samples
that open alike send the same judgements) on arithmetic problems through the runner, all
queries in flight, on ``HFBackend`` with its prefix cache (the default, 1 GiB in 16-token blocks)
and without it (``prefix_cache_gib=0``), policy and PRM alike. The two alternate, so that
machine noise hits both. Reports wall time, the tokens each side's models computed
(policy and PRM: prompt tokens not read from the cache, plus generated ones), cached
against ideal tokens, and whether both sides wrote the same completions (each sample has
its own seeded stream, so they must, up to float noise in the logits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from statistics import median
from typing import Any

SIDES = {"cache": 1.0, "no_cache": 0.0}


async def _exact(problem: Any, answer: Any) -> bool:
    return answer.answer == problem.answer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("hf_prefix_cache.json"))
    args = ap.parse_args()

    import torch

    from strategies import MCTS, BeamSearch, BestOfN
    from ttc.backends.hf import HFBackend
    from ttc.datasets import arith_problems
    from ttc.reference import POLICY_PATH, PRM_PATH
    from ttc.runner import run_queries, summarize
    from verifiers.prm import PRMVerifier

    problems = arith_problems(limit=args.problems, steps=args.steps, seed=99)

    def run(name: str, gib: float) -> dict[str, Any]:
        # Fresh backends each run: no run starts from another's cache.
        policy = HFBackend(str(POLICY_PATH), seed=7, device="cpu", dtype="float32", prefix_cache_gib=gib)
        prm = PRMVerifier(HFBackend(str(PRM_PATH), seed=7, device="cpu", dtype="float32", prefix_cache_gib=gib))
        strategy = {
            "beam_search": lambda: BeamSearch(n=8, width=4, verifier=prm),
            "mcts": lambda: MCTS(verifier=prm),
            "best_of_16_weighted": lambda: BestOfN(n=16, select="weighted", verifier=prm),
        }[name]()
        t = time.perf_counter()
        recs = asyncio.run(
            run_queries(problems, strategy, policy, _exact, concurrency=len(problems), seed=11, progress=False)
        )
        wall = time.perf_counter() - t
        s = summarize(recs)
        computed = sum(
            r["prompt_tokens"] - r["cached_tokens"] + r["generated_tokens"]
            + r["verifier_tokens"] - r["verifier_cached_tokens"]
            for r in recs
        )
        return {
            "wall_s": wall,
            "computed_tokens": computed,
            "cached_tokens": s["cached_tokens"],
            "ideal_cached_tokens": s["ideal_cached_tokens"],
            "verifier_cached_tokens": sum(r["verifier_cached_tokens"] for r in recs) / len(recs),
            "accuracy": s["accuracy"],
            "completions": [r.get("completion") for r in recs],
        }

    result: dict[str, Any] = {
        "command": f"python experiments/bench/hf_prefix_cache.py --problems {args.problems} --steps {args.steps} "
        f"--repeats {args.repeats}",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32",
    }
    for name in ("beam_search", "mcts", "best_of_16_weighted"):
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for _ in range(args.repeats):
            for side, gib in SIDES.items():
                runs[side].append(run(name, gib))
        on, off = runs["cache"], runs["no_cache"]
        result[name] = {
            **{f"{side}_wall_s": [r["wall_s"] for r in rs] for side, rs in runs.items()},
            "speedup_of_medians": median(r["wall_s"] for r in off) / median(r["wall_s"] for r in on),
            "computed_tokens": {side: rs[0]["computed_tokens"] for side, rs in runs.items()},
            "computed_ratio": off[0]["computed_tokens"] / on[0]["computed_tokens"],
            "policy_cached_per_query": on[0]["cached_tokens"],
            "policy_ideal_cached_per_query": on[0]["ideal_cached_tokens"],
            "prm_cached_per_query": on[0]["verifier_cached_tokens"],
            "accuracy": {side: rs[0]["accuracy"] for side, rs in runs.items()},
            "same_completions": sum(
                a == b for a, b in zip(on[0]["completions"], off[0]["completions"], strict=True)
            ) / len(problems),
        }
        print(name, json.dumps(result[name]), flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
