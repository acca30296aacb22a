"""The SGLang backend on SGLang's real engine, and the HTTP backend on SGLang's real server.

Runs inside .venv-sglang (bash scripts/setup_sglang.sh). Without a GPU:
    SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/sglang_stub \\
        .venv-sglang/bin/python -m pytest -q tests/test_backend_sglang.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sglang")

from strategies import BestOfN, CoT
from strategies.beam_search import BeamSearch
from strategies.mcts import MCTS
from ttc.backends.base import BackendError
from ttc.datasets import arith_problems
from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.runner import run_queries, summarize
from ttc.types import GenRequest, Problem, ScoreRequest
from verifiers.math import equivalent
from verifiers.prm import PRMVerifier

pytestmark = pytest.mark.engine


async def grade(problem: Any, answer: Any) -> bool:
    return equivalent(problem.answer, answer.answer)


def _engine(path: Any, cpu_cores: str | None = None) -> Any:
    from ttc.backends.sglang import SGLangBackend

    return SGLangBackend(
        str(path), seed=0, dtype="float32", max_model_len=256, max_total_tokens=16384, cpu_cores=cpu_cores
    )


@pytest.fixture(scope="module")
def policy() -> Iterator[Any]:
    backend = _engine(POLICY_PATH)
    yield backend
    backend.close()


@pytest.fixture
def prm() -> Iterator[Any]:
    """Started per test that needs it: an idle SGLang scheduler still polls. On cores of its
    own (half the machine's), as the policy's and the PRM's engines run in two cohorts."""
    from tests.servers import own_cores

    backend = _engine(PRM_PATH, cpu_cores=own_cores(1))
    yield backend
    backend.close()
    assert backend.llm.loop.is_closed()  # its tasks ended, not left to be reported as destroyed at exit


def hf_logprobs(path: Any, ids: list[int], start: int) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [logp[i - 1, ids[i]].item() for i in range(start, len(ids))]


# -- the engine -----------------------------------------------------------------------------------


def test_geometry_and_token_level_cache(policy: Any) -> None:
    assert (policy.kv.num_layers, policy.kv.num_kv_heads, policy.kv.head_dim) == (4, 2, 32)
    assert policy.kv.dtype_bytes == 4  # float32 KV
    assert policy.block_size == 1 and policy.max_model_len == 256


def test_generate_n_keeps_stop_strings_and_ids_match_text(policy: Any) -> None:
    req = GenRequest(prompt="Q:12+7*3-5=?\n", n=4, stop=["\n"], max_tokens=40, logprobs=True)
    (res,) = asyncio.run(policy.generate([req]))
    assert res.prompt_token_ids[0] == policy.tokenizer.bos_token_id
    assert len(res.completions) == 4
    for c in res.completions:
        assert policy.tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
        assert c.finish_reason == "length" or (c.text.endswith("\n") and c.text.count("\n") == 1)
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
        assert c.cumulative_logprob == pytest.approx(sum(c.logprobs), abs=1e-4)
    (long,) = asyncio.run(policy.generate([GenRequest(prompt="Q:57+38*3-19=?\n", n=6, max_tokens=60)]))
    assert len({c.text for c in long.completions}) > 1  # copies sample independently
    assert all(c.token_ids[-1] == policy.tokenizer.eos_token_id for c in long.completions if c.finish_reason == "stop")


def test_copies_of_a_new_prompt_share_one_prefill(policy: Any) -> None:
    ids = policy.encode("Q:" + "+".join(["17"] * 10) + "=?\n")
    params = {"temperature": 1.0, "max_new_tokens": 4, "no_stop_trim": True}
    served = policy._run([(ids, dict(params), None) for _ in range(4)], batch_id=1)
    assert [out["meta_info"]["cached_tokens"] for out, *_ in served] == [len(ids) - 1] * 4
    before = [cached for *_, cached in served]  # what the cache held before the request: "<s>Q:1" at most
    assert len(set(before)) == 1 and before[0] <= 4
    (again,) = asyncio.run(policy.generate([GenRequest(prompt=ids, max_tokens=4)]))
    assert again.cached_tokens == len(ids) - 1  # token-level: all but the last prompt token


def test_score_matches_transformers(policy: Any) -> None:
    prompt, cont = "Q:12+7=?\n", "12+7=19\nA:19\n"
    good, bad = asyncio.run(
        policy.score([ScoreRequest(prompt=prompt, continuation=c) for c in (cont, "12+7=91\nA:91\n")])
    )
    ids = good.prompt_token_ids
    assert good.token_logprobs == pytest.approx(hf_logprobs(POLICY_PATH, ids, len(ids) - len(cont)), abs=2e-3)
    assert sum(good.token_logprobs) > sum(bad.token_logprobs)


def test_a_too_long_prompt_fails_alone(policy: Any) -> None:
    with pytest.raises(BackendError, match="max_model_len"):
        asyncio.run(policy.generate([GenRequest(prompt="Q:" + "1+" * 200 + "1=?\n")]))
    problems = arith_problems(limit=3, steps=2)
    problems.append(Problem(id="too-long", prompt="Q:" + "1+" * 200 + "1=?\n", answer="201", answer_format="reference"))
    records = asyncio.run(run_queries(problems, CoT(), policy, grade, progress=False))
    assert "max_model_len" in {r["id"]: r for r in records}["too-long"]["error"]
    assert sum(r["error"] is None for r in records) == 3


def test_cot_and_best_of_n_end_to_end(policy: Any) -> None:
    problems = arith_problems(limit=16, steps=2, seed=5)
    cot = summarize(asyncio.run(run_queries(problems, CoT(temperature=0.0), policy, grade, progress=False)))
    assert cot["errors"] == 0 and cot["accuracy"] >= 0.6  # chance is ~1/1000
    bon = summarize(asyncio.run(run_queries(problems, BestOfN(n=4), policy, grade, progress=False)))
    assert bon["errors"] == 0 and bon["gpu_seconds"] > 0
    assert bon["kv_peak_tokens"] < bon["kv_peak_tokens_unshared"]


def test_sglang_serves_the_built_prm_as_transformers_computes_it(prm: Any) -> None:
    """The PRM's constructed layers load in SGLang's Llama (attention biases; no
    MLP biases, which SGLang would drop) and judge as in transformers."""
    from tests.test_reference_models import assert_judges_like_transformers

    assert_judges_like_transformers(prm)


@pytest.mark.slow
def test_tree_search_with_the_prm_hits_the_radix_cache(policy: Any, prm: Any, capsys: Any) -> None:
    verifier = PRMVerifier(prm)
    problems = arith_problems(limit=6, steps=3, seed=13)
    for strategy in (BeamSearch(n=4, width=2, verifier=verifier), MCTS(simulations=6, branching=2, verifier=verifier)):
        s = summarize(asyncio.run(run_queries(problems, strategy, policy, grade, progress=False)))
        assert s["errors"] == 0, strategy.name
        assert s["verifier_tokens"] > 0
        ideal = s["ideal_cached_tokens_token"]
        # The radix cache serves at least what this query's own earlier requests computed
        # (less what eviction or scheduling lost); across queries it may serve more.
        assert s["cached_tokens"] >= 0.8 * ideal, (strategy.name, s["cached_tokens"], ideal)
        with capsys.disabled():
            print(
                f"\n{strategy.name}: accuracy {s['accuracy']:.2f}, cached {s['cached_tokens']:.0f} of "
                f"{s['prompt_tokens']:.0f} prompt tokens per query, ideal {ideal:.0f} "
                f"(hit ratio vs ideal {s['cached_tokens'] / max(ideal, 1):.2f})"
            )


def test_two_cohorts_run_the_policy_and_the_prm_engine_at_once(policy: Any, prm: Any) -> None:
    """With two cohorts the policy's batch of one and the PRM's of the other run in two
    threads at once: each engine must have an event loop of its own (both once took the
    process's, and every query failed with "this event loop is already running")."""
    import time

    spans: dict[str, list[tuple[float, float]]] = {"policy": [], "prm": []}

    def timed(name: str, run_batch: Any) -> Any:
        def run(jobs: Any, batch_id: int) -> Any:
            start = time.perf_counter()
            try:
                return run_batch(jobs, batch_id)
            finally:
                spans[name].append((start, time.perf_counter()))

        return run

    engines = {"policy": policy, "prm": prm}
    inner = {name: b._batcher._run_batch for name, b in engines.items()}
    for name, b in engines.items():
        b._batcher._run_batch = timed(name, inner[name])
    try:
        records = asyncio.run(
            run_queries(arith_problems(limit=8, steps=3, seed=21), BeamSearch(n=4, width=2, verifier=PRMVerifier(prm)),
                        policy, grade, cohorts=2, seed=3, progress=False)
        )  # fmt: skip
    finally:
        for name, b in engines.items():
            b._batcher._run_batch = inner[name]
    s = summarize(records)
    assert s["errors"] == 0, [r["error"] for r in records if r["error"]][:2]
    assert s["accuracy"] > 0
    overlap = sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in spans["policy"] for b0, b1 in spans["prm"])
    assert overlap > 0, spans  # the two engines computed at the same time


def test_cpu_cores_bind_the_engine_processes_and_nothing_else(policy: Any, prm: Any) -> None:
    """The PRM engine's processes run on the cores it was given; the policy's (no
    ``cpu_cores``) and the thread that started both keep all of this process's cores."""
    import math
    import os

    import psutil

    from tests.servers import own_cores
    from ttc.backends.cpu import cpu_core_ids

    if own_cores(1) is None:
        pytest.skip("cpu_cores binds engines on machines with 2 cores or more")
    mine = os.sched_getaffinity(0)

    def cores(backend: Any) -> list[set[int]]:
        return [set(psutil.Process(pid).cpu_affinity()) for pid in backend.llm.get_all_child_pids()]

    assert cores(prm) and all(c == set(cpu_core_ids(own_cores(1))) for c in cores(prm))
    assert cores(policy) and all(c == mine for c in cores(policy))
    assert len(mine) >= 2  # the thread that started the PRM's engine got its cores back
    # and it judges on those cores: a right step good, a wrong one bad
    chain = "Q:37+45*2-18=?\n37+45=82\n82*2={}\n"  # tests/test_reference_models.py's PRM_CHAINS
    right, wrong = asyncio.run(
        prm.score([ScoreRequest(prompt=chain.format(v), continuation="<good>") for v in (164, 146)])
    )
    assert right.token_logprobs[0] > math.log(0.5) > wrong.token_logprobs[0]


def test_sglang_cpu_cores_are_checked_before_an_engine_starts() -> None:
    from ttc.backends.sglang import SGLangBackend

    with pytest.raises(ValueError, match="cpu_cores"):
        SGLangBackend("no-such-model", cpu_cores="99999")
    with pytest.raises(ValueError, match="'0-3'"):
        SGLangBackend(str(PRM_PATH), cpu_cores="0|1")


def test_ttc_run_on_sglang_with_cores_of_its_own_exits_cleanly(tmp_path: Path) -> None:
    """``python -m ttc.run backend=sglang``, policy and PRM each on cores of their own
    (``cpu_cores`` through the config), two cohorts; the process exits without a traceback
    (SGLang's own exit hook killed every child of the process, multiprocessing's resource
    tracker too, and Python reported it)."""
    import json
    import os
    import subprocess
    import sys

    from tests.servers import ROOT, own_cores

    cores = [f"backend.cpu_cores={own_cores(0)}", f"verifier.engine.cpu_cores={own_cores(1)}"] if own_cores(1) else []
    p = subprocess.run(
        [sys.executable, "-m", "ttc.run", "backend=sglang", "strategy=beam_search", "verifier=prm", *cores,
         "cohorts=2", "dataset.limit=4", "progress=false", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_queries"] == 4 and summary["errors"] == 0 and summary["verifier_tokens"] > 0


def test_closing_the_prm_engine_leaves_the_policy_engine_running(policy: Any) -> None:
    """Runs after the tree-search test closed its PRM engine (SGLang's own shutdown
    would have killed every engine of the process)."""
    (res,) = asyncio.run(policy.generate([GenRequest(prompt="Q:3+4=?\n", max_tokens=8)]))
    assert res.completions[0].token_ids


# -- SGLang's HTTP server through the HTTP backend ---------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[Any]:
    """The policy's and the PRM's servers (with --sleep-on-idle, the idle one leaves its core alone)."""
    from tests.servers import running, start_sglang

    with running(start_sglang(POLICY_PATH), start_sglang(PRM_PATH, name="sglang-prm")) as pair:
        yield pair


def _http(url: str, mode: str, path: Any = POLICY_PATH) -> Any:
    from ttc.backends.http import HTTPBackend

    backend = HTTPBackend(str(path), endpoints=[url], api="openai" if mode == "openai" else "sglang",
                          batch_route=mode == "batched")  # fmt: skip
    assert backend.uses_route is (mode == "batched")
    return backend


@pytest.mark.parametrize("mode", ["batched", "one call each", "openai"])
def test_http_backend_on_the_sglang_server(servers: Any, mode: str) -> None:
    backend = _http(servers[0].url, mode)
    assert backend.block_size == 1 and backend.max_model_len == 256
    req = GenRequest(prompt="Q:12+7*3-5=?\n", n=3, stop=["\n"], max_tokens=40, logprobs=True)
    (res,) = asyncio.run(backend.generate([req]))
    assert len(res.completions) == 3
    for c in res.completions:
        assert backend.tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
        assert c.finish_reason == "length" or (c.text.endswith("\n") and c.text.count("\n") == 1)
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    prompt = "Q:" + "+".join(["19"] * 12) + "=?\n"
    asyncio.run(backend.generate([GenRequest(prompt=prompt, max_tokens=2)]))
    (again,) = asyncio.run(backend.generate([GenRequest(prompt=prompt, max_tokens=2)]))
    assert again.cached_tokens == len(again.prompt_token_ids) - 1
    if mode != "openai":
        (sc,) = asyncio.run(backend.score([ScoreRequest(prompt="Q:12+7=?\n", continuation="12+7=19\n")]))
        want = hf_logprobs(POLICY_PATH, sc.prompt_token_ids, len(sc.prompt_token_ids) - len("12+7=19\n"))
        assert sc.token_logprobs == pytest.approx(want, abs=2e-3)
    records = asyncio.run(run_queries(arith_problems(limit=6, steps=2), BestOfN(n=3), backend, grade, progress=False))
    assert all(r["error"] is None for r in records)


def test_concurrent_calls_reach_the_server_as_one_batch_and_sample_as_in_process(servers: Any, policy: Any) -> None:
    """Six coroutines' requests (greedy, n=2 each) in one POST, after one prefill of their
    prompts; the server's outputs are the in-process engine's, token for token."""
    backend = _http(servers[0].url, "batched")
    reqs = [GenRequest(prompt=f"Q:9{a}*{a}-9{a}=?\n", n=2, temperature=0.0, max_tokens=24) for a in range(6)]

    async def concurrently(b: Any) -> list[Any]:
        return [r for (r,) in await asyncio.gather(*(b.generate([q]) for q in reqs))]

    served = asyncio.run(concurrently(backend))
    assert backend.endpoints[0].sent == 2  # the shared prompts' prefill, then the batch
    assert len({r.batch_id for r in served}) == 1
    # Cached tokens are what the cache held before the request (the prompts are new), not after the prefill.
    assert all(r.cached_tokens < len(r.prompt_token_ids) // 2 for r in served)
    local = asyncio.run(policy.generate(reqs))
    tokens = [[c.token_ids for c in r.completions] for r in served]
    assert tokens == [[c.token_ids for c in r.completions] for r in local]
    one_each = _http(servers[0].url, "one call each")
    assert asyncio.run(concurrently(one_each)) and one_each.endpoints[0].sent == 2 * len(reqs)
    backend.close()
    one_each.close()


def test_tree_search_through_sglang_servers_with_the_prm_on_its_own(servers: Any) -> None:
    """Beam search and MCTS with the policy and the PRM each behind its own SGLang server,
    sent in merged batches and one strategy call at a time."""
    posts = {}
    for mode in ("batched", "one call each"):
        backend, prm = _http(servers[0].url, mode), _http(servers[1].url, mode, PRM_PATH)
        v, problems = PRMVerifier(prm), arith_problems(limit=4, steps=3, seed=13)
        for strategy in (BeamSearch(n=4, width=2, verifier=v), MCTS(simulations=6, branching=2, verifier=v)):
            s = summarize(asyncio.run(run_queries(problems, strategy, backend, grade, progress=False)))
            assert s["errors"] == 0 and s["verifier_tokens"] > 0, (mode, strategy.name)
            # Token-granular radix cache: each branch's parent prefix is served from it.
            assert s["cached_tokens"] >= 0.8 * s["ideal_cached_tokens_token"], (mode, strategy.name, s)
        posts[mode] = (backend.endpoints[0].sent, prm.endpoints[0].sent)
        backend.close()
        prm.close()
    # Four queries in flight, in step: batched, each step's calls of all of them share a POST.
    (gen, judge), (gen_each, judge_each) = posts["batched"], posts["one call each"]
    assert 3 * gen <= gen_each and 3 * judge <= judge_each, posts


def test_a_killed_sglang_replica_loses_nothing_and_a_rerun_completes(servers: Any, tmp_path: Path) -> None:
    """A second policy replica beside the first, killed mid-run: its batches go to the first."""
    from tests.faults import kill_a_replica_mid_run
    from tests.servers import running, start_sglang
    from ttc.backends.http import HTTPBackend

    with running(start_sglang(POLICY_PATH, name="sglang-b")) as (second,):
        backend = HTTPBackend(str(POLICY_PATH), endpoints=[servers[0].url, second.url], api="sglang",
                              backoff_s=0.1, timeout_s=60)  # fmt: skip
        kill_a_replica_mid_run(backend, second, tmp_path / "results.jsonl")
