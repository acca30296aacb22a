"""GPU check of the transformers backend (the one backend that runs where only PyTorch is).

    python experiments/gpu/hf_cuda_check.py --out results.json

On a CUDA machine: greedy outputs of the reference policy match the CPU's token
for token (fp32, TF32 off), CoT and Best-of-8 run through the runner with
their ledgers, Best-of-8 again with one sequence per forward pass (``max_num_seqs=1``:
what batching buys on the device, and how many completions come out the same when a
sample's batch differs), the reference PRM scores a correct step above a corrupted one, and
PRM beam search runs with the prefix cache and without it (``prefix_cache_gib=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from strategies import BeamSearch, BestOfN, CoT
from ttc.backends.hf import HFBackend
from ttc.datasets import arith_problems
from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.runner import run_queries, summarize
from ttc.tasks import arith
from ttc.types import GenRequest
from verifiers.prm import PRMVerifier


async def exact(problem, answer) -> bool:
    return answer.answer == problem.answer


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("hf_cuda_check.json"))
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out: dict = {"device": args.device, "torch": torch.__version__}
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)

    def save() -> None:  # after each check: what is done survives a timeout
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    gpu = HFBackend(str(POLICY_PATH), device=args.device, dtype="float32")
    cpu = HFBackend(str(POLICY_PATH), device="cpu", dtype="float32")
    reqs = [GenRequest(prompt=p.prompt(), temperature=0.0, max_tokens=80) for p in arith.generate(8, 4, seed=5)]
    a, b = asyncio.run(gpu.generate(reqs)), asyncio.run(cpu.generate(reqs))
    out["greedy_matches_cpu"] = [
        x.completions[0].token_ids == y.completions[0].token_ids for x, y in zip(a, b, strict=True)
    ]
    save()

    problems = arith_problems(limit=32, steps=4, seed=77)
    one_per_pass = HFBackend(str(POLICY_PATH), device=args.device, dtype="float32", max_num_seqs=1)
    completions = {}
    for name, strat, backend in (
        ("cot", CoT(), gpu),
        ("best_of_8", BestOfN(n=8), gpu),
        ("best_of_8_one_per_pass", BestOfN(n=8), one_per_pass),
    ):
        t = time.perf_counter()
        recs = asyncio.run(run_queries(problems, strat, backend, exact, concurrency=32, seed=3, progress=False))
        completions[name] = [r["completion"] for r in recs]
        s = summarize(recs)
        s["wall_s"] = time.perf_counter() - t
        s["generated_tokens_per_s"] = s["generated_tokens"] * len(recs) / s["wall_s"]
        out[name] = {k: s[k] for k in ("accuracy", "errors", "generated_tokens", "gpu_seconds", "kv_peak_bytes",
                                       "kv_peak_bytes_unshared", "wall_s", "generated_tokens_per_s")}
        save()

    same = [x == y for x, y in zip(completions["best_of_8"], completions["best_of_8_one_per_pass"], strict=True)]
    out["best_of_8_same_completion_one_per_pass"] = sum(same) / len(same)
    out["batching_gain"] = out["best_of_8"]["generated_tokens_per_s"] / out["best_of_8_one_per_pass"][
        "generated_tokens_per_s"
    ]

    prm = PRMVerifier(HFBackend(str(PRM_PATH), device=args.device, dtype="float32"))
    good = asyncio.run(prm.score_steps(None, "Q:37+45*2-18=?\n", ["37+45=82\n", "82*2=164\n"]))
    bad = asyncio.run(prm.score_steps(None, "Q:37+45*2-18=?\n", ["37+45=82\n", "82*2=146\n"]))
    out["prm_good_vs_bad_last_step"] = [good[-1], bad[-1]]
    save()

    beams = {}
    for name, gib in (("beam_search_prefix_cache", 1.0), ("beam_search_no_cache", 0.0)):
        policy = HFBackend(str(POLICY_PATH), device=args.device, dtype="float32", prefix_cache_gib=gib)
        judge = PRMVerifier(HFBackend(str(PRM_PATH), device=args.device, dtype="float32", prefix_cache_gib=gib))
        t = time.perf_counter()
        recs = asyncio.run(run_queries(problems, BeamSearch(n=8, width=4, verifier=judge), policy, exact,
                                       concurrency=32, seed=3, progress=False))
        beams[name] = [r["completion"] for r in recs]
        s = summarize(recs)
        out[name] = {k: s[k] for k in ("accuracy", "errors", "cached_tokens", "ideal_cached_tokens")}
        out[name]["wall_s"] = time.perf_counter() - t
        save()
    out["prefix_cache_speedup"] = out["beam_search_no_cache"]["wall_s"] / out["beam_search_prefix_cache"]["wall_s"]
    same = [x == y for x, y in zip(beams["beam_search_prefix_cache"], beams["beam_search_no_cache"], strict=True)]
    out["beam_search_same_completion_without_cache"] = sum(same) / len(same)
    if args.device == "cuda":
        out["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out, indent=2))
    save()


if __name__ == "__main__":
    main()
