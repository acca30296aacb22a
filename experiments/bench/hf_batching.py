"""The transformers backend, batched against one sequence per forward pass: same process.

    python experiments/bench/hf_batching.py [--problems 32] [--repeats 2]

Best-of-8 and PRM beam search (n=8, width 4) on arithmetic problems through the runner,
all queries in flight, on ``HFBackend(max_num_seqs=64)`` (the default: samples decode
side by side, each prompt prefilled once) and ``max_num_seqs=1`` (every sample and every
PRM judgement in a forward pass of its own, as the backend ran before it batched).
The two alternate, so that machine noise hits both. Every sample has its own seeded
stream, so both sides must pick the same answers; the script checks that they do.
Reports generated tokens/s of wall time and the ratio of medians.
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


async def _exact(problem: Any, answer: Any) -> bool:
    return answer.answer == problem.answer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("hf_batching.json"))
    args = ap.parse_args()

    import torch

    from strategies import BeamSearch, BestOfN
    from ttc.backends.hf import HFBackend
    from ttc.datasets import arith_problems
    from ttc.reference import POLICY_PATH, PRM_PATH
    from ttc.runner import run_queries
    from verifiers.prm import PRMVerifier

    problems = arith_problems(limit=args.problems, steps=4, seed=99)
    sides = {}
    for seqs in (64, 1):
        policy = HFBackend(str(POLICY_PATH), seed=7, device="cpu", dtype="float32", max_num_seqs=seqs)
        prm = PRMVerifier(HFBackend(str(PRM_PATH), seed=7, device="cpu", dtype="float32", max_num_seqs=seqs))
        sides[seqs] = (policy, prm)

    def run(strategy_name: str, seqs: int) -> tuple[float, list[str | None]]:
        policy, prm = sides[seqs]
        strategy = BestOfN(n=8) if strategy_name == "best_of_n" else BeamSearch(n=8, width=4, verifier=prm)
        t = time.perf_counter()
        recs = asyncio.run(
            run_queries(problems, strategy, policy, _exact, concurrency=len(problems), seed=11, progress=False)
        )
        wall = time.perf_counter() - t
        return sum(r["generated_tokens"] for r in recs) / wall, [r.get("completion") for r in recs]

    result: dict[str, Any] = {
        "command": f"python experiments/bench/hf_batching.py --problems {args.problems} --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32",
    }
    for name in ("best_of_n", "beam_search"):
        tps: dict[int, list[float]] = {64: [], 1: []}
        answers: dict[int, list[str | None]] = {}
        for _ in range(args.repeats):
            for seqs in (64, 1):
                rate, answers[seqs] = run(name, seqs)
                tps[seqs].append(rate)
        result[name] = {
            "batched_tokens_per_s": tps[64],
            "one_per_pass_tokens_per_s": tps[1],
            "ratio_of_medians": median(tps[64]) / median(tps[1]),
            "same_answers": answers[64] == answers[1],
        }
        print(name, json.dumps(result[name]))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
