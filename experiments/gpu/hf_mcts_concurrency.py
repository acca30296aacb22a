"""64 MCTS queries at once against the same 64 one at a time, on a GPU, with the transformers backend.

    python experiments/gpu/hf_mcts_concurrency.py --out hf_mcts_concurrency.json

The tree-search issue's 5x target is measured on vLLM on two CPU cores
(``experiments/tree_search/concurrency_knobs.py``), where a batch of 512 sequences costs
nearly 512 times one sequence's compute and batching wins little. This is the same pair of
runs (arithmetic, six steps, 16 simulations, branching 4, the reference policy and PRM) where
a forward pass costs about the same for one sequence as for hundreds: the ratio that
batching every branch of every query buys when the device is not the bound. Each pair runs
the concurrent side first, then the sequential one; the first concurrent run is a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from strategies.mcts import MCTS
from ttc.backends.hf import HFBackend
from ttc.datasets import arith_problems
from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.runner import run_queries, summarize
from verifiers.prm import PRMVerifier


async def _grade(problem: Any, answer: Any) -> bool:
    return answer.answer == problem.answer


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4], help="leaves per wave")
    ap.add_argument("--repeats", type=int, default=1, help="pairs per setting")
    ap.add_argument("--out", type=Path, default=Path("hf_mcts_concurrency.json"))
    args = ap.parse_args()
    out: dict[str, Any] = {"device": args.device, "torch": torch.__version__, "problems": args.problems}
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    # Room for every sequence of 64 trees' waves in one forward pass.
    policy = HFBackend(str(POLICY_PATH), seed=2024, device=args.device, dtype="float32", max_num_seqs=1024)
    prm = PRMVerifier(HFBackend(str(PRM_PATH), seed=2024, device=args.device, dtype="float32", max_num_seqs=1024))
    problems = arith_problems(limit=args.problems, steps=6, seed=2024)

    def wall(concurrency: int, parallel: int) -> tuple[float, list[dict[str, Any]]]:
        mcts = MCTS(simulations=16, branching=4, parallel=parallel, verifier=prm)
        t = time.perf_counter()
        records = asyncio.run(
            run_queries(problems, mcts, policy, _grade, concurrency=concurrency, seed=2024, progress=False)
        )
        return time.perf_counter() - t, records

    wall(len(problems), args.parallel[0])  # warm-up: kernels, allocator
    for parallel in args.parallel:
        pairs, same = [], []
        for _ in range(args.repeats):
            conc, at_once = wall(len(problems), parallel)
            seq, one_by_one = wall(1, parallel)
            pairs.append((conc, seq))
            # Records come in the order queries finish, which differs between the two.
            alone = {r["id"]: r["completion"] for r in one_by_one}
            same.append(sum(r["completion"] == alone[r["id"]] for r in at_once))
            s = summarize(at_once)
            out[f"leaves_{parallel}"] = {
                "concurrent_s": round(statistics.median(c for c, _ in pairs), 2),
                "sequential_s": round(statistics.median(q for _, q in pairs), 2),
                "speedup": round(statistics.median(q / c for c, q in pairs), 2),  # of each pair's ratio
                "pairs": [[round(c, 2), round(q, 2)] for c, q in pairs],
                "accuracy": s["accuracy"],
                "accuracy_one_at_a_time": summarize(one_by_one)["accuracy"],
                "errors": s["errors"],
                "generated_tokens": s["generated_tokens"],
                "same_completion_both_ways": same,
            }
            print(json.dumps({"parallel": parallel, "concurrent_s": conc, "sequential_s": seq}), flush=True)
            args.out.write_text(json.dumps(out, indent=2) + "\n")  # what is done survives a timeout
    if args.device == "cuda":
        out["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out, indent=2))
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
