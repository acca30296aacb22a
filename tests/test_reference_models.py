"""The shipped checkpoints: Hugging Face format, loadable as they are, small, and useful."""

from __future__ import annotations

import asyncio
import json

import pytest

from ttc.reference import MODELS_DIR, POLICY_PATH, PRM_PATH
from ttc.reference.tokenizer import BAD, GOOD
from ttc.tasks import arith
from ttc.types import GenRequest


def test_checkpoints_are_small_llamas_in_hf_format() -> None:
    total = sum(f.stat().st_size for f in MODELS_DIR.rglob("*") if f.is_file())
    assert total <= 20 * 2**20
    for path in (POLICY_PATH, PRM_PATH):
        cfg = json.loads((path / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLM"]
        assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def test_tokenizer_is_character_level_with_declared_specials() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(POLICY_PATH))
    text = "Q:37+45*2-18=?\n37+45=82\n"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.eos_token == "</s>" and {GOOD, BAD} <= set(tok.all_special_tokens)


def test_transformers_loads_the_policy_and_it_solves_easy_problems() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(POLICY_PATH))
    model = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH))
    probs = arith.generate(10, steps=1, seed=42)
    solved = 0
    for p in probs:
        ids = tok(p.prompt(), return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=30, do_sample=False)
        solved += arith.extract_answer(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)) == str(p.answer)
    assert solved >= 8


@pytest.mark.engine
def test_hf_backend_matches_vllm_greedy_token_for_token(policy_engine) -> None:
    from ttc.backends.hf import HFBackend

    hf = HFBackend(str(POLICY_PATH), device="cpu", dtype="float32")
    reqs = [GenRequest(prompt=p.prompt(), temperature=0.0, max_tokens=60) for p in arith.generate(4, 3, seed=8)]
    ours = asyncio.run(hf.generate(reqs))
    theirs = asyncio.run(policy_engine.generate(reqs))
    for a, b in zip(ours, theirs, strict=True):
        assert a.completions[0].token_ids == b.completions[0].token_ids
        assert a.completions[0].text == b.completions[0].text
        assert a.completions[0].cumulative_logprob is None is b.completions[0].cumulative_logprob  # not asked


def test_hf_backend_stop_strings_and_scores() -> None:
    from ttc.backends.hf import HFBackend
    from ttc.types import ScoreRequest

    hf = HFBackend(str(POLICY_PATH), device="cpu", dtype="float32")
    (res,) = asyncio.run(hf.generate([GenRequest(prompt="Q:12+7*3=?\n", n=2, stop=["\n"], seed=1, max_tokens=30)]))
    assert all(c.text.endswith("\n") and c.text.count("\n") == 1 for c in res.completions)
    (asked,) = asyncio.run(hf.generate([GenRequest(prompt="Q:12+7=?\n", stop=["\n"], max_tokens=30, logprobs=True)]))
    (c,) = asked.completions
    assert c.logprobs and len(c.logprobs) == len(c.token_ids) and c.cumulative_logprob == pytest.approx(sum(c.logprobs))
    (s,) = asyncio.run(hf.score([ScoreRequest(prompt="Q:12+7=?\n", continuation="12+7=19\n")]))
    assert len(s.token_logprobs) == len("12+7=19\n") and all(lp <= 0 for lp in s.token_logprobs)


def test_hf_backend_stops_generating_at_a_stop_string_of_the_completion() -> None:
    from ttc.backends.hf import HFBackend

    hf = HFBackend(str(POLICY_PATH), device="cpu", dtype="float32")
    forward, calls = hf.model.forward, []
    hf.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    req = GenRequest(prompt="Q:12+7*3=?\n", stop=["="], temperature=0.0, max_tokens=200)
    (res,) = asyncio.run(hf.generate([req]))
    (c,) = res.completions
    assert c.text.endswith("=") and c.text.count("=") == 1 and c.finish_reason == "stop"
    assert len(calls) == len(c.token_ids)  # one forward pass per token: nothing generated past the stop
    (free,) = asyncio.run(hf.generate([req.model_copy(update={"stop": [], "max_tokens": 12})]))
    (f,) = free.completions
    assert f.text.startswith(c.text) and len(f.token_ids) == 12 and f.finish_reason == "length"
    # A stop string that only the prompt's end and the completion's start make up is no stop
    # (no engine matches into the prompt; transformers' own ``stop_strings`` would).
    (across,) = asyncio.run(hf.generate([req.model_copy(update={"stop": ["?\n" + f.text[0]], "max_tokens": 12})]))
    assert across.completions[0].token_ids == f.token_ids and across.completions[0].finish_reason == "length"


PRM_CHAINS = [  # (prompt, steps): right, a slip continued correctly, a wrong final answer
    ("Q:37+45*2-18=?\n", ["37+45=82\n", "82*2=164\n", "164-18=146\n", "A:146\n"]),
    ("Q:37+45*2-18=?\n", ["37+45=82\n", "82*2=146\n", "146-18=128\n", "A:128\n"]),
    ("Q:25+88-40=?\n", ["25+88=113\n", "113-40=73\n", "A:37\n"]),
]


def prm_step_scores(backend) -> list[list[float]]:
    from verifiers.prm import PRMVerifier

    prm = PRMVerifier(backend)
    return [asyncio.run(prm.score_steps(None, prompt, steps)) for prompt, steps in PRM_CHAINS]


def assert_judges_like_transformers(engine) -> list[list[float]]:
    """The engine's PRM step scores on PRM_CHAINS, checked against transformers'."""
    from ttc.backends.hf import HFBackend

    want = prm_step_scores(HFBackend(str(PRM_PATH), device="cpu", dtype="float32"))
    got = prm_step_scores(engine)
    for w, g in zip(want, got, strict=True):
        assert g == pytest.approx(w, abs=0.02)
    return got


@pytest.mark.engine
def test_vllm_serves_the_built_prm_as_transformers_computes_it(prm_engine) -> None:
    """The PRM's constructed layers (rotary query/key biases, a 1e5 scale
    constant) give the same judgements on vLLM's kernels as in transformers."""
    right, slip, wrong_answer = assert_judges_like_transformers(prm_engine)
    assert min(right) > 0.5 and slip[0] > 0.5 > max(slip[1:]) and wrong_answer[-1] < 0.5 < min(wrong_answer[:-1])
