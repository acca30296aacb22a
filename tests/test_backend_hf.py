"""The transformers backend batches like an engine: prompts prefilled together, each once
for its samples, every sample on a random stream of its own."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest

from ttc.reference import POLICY_PATH
from ttc.tasks import arith
from ttc.types import GenRequest, ScoreRequest

PROMPTS = [p.prompt() for p in arith.generate(6, 3, seed=5)] + ["Q:7+8=?\n", "Q:123+456*2-99=?\n"]


@pytest.fixture(scope="module")
def hf():
    from ttc.backends.hf import HFBackend

    return HFBackend(str(POLICY_PATH), seed=3, device="cpu", dtype="float32")


def count_forwards(hf, monkeypatch) -> list[int]:
    calls: list[int] = []
    forward = hf.model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(hf.model, "forward", counting)
    return calls


def tokens(results) -> list[list[list[int]]]:
    return [[c.token_ids for c in r.completions] for r in results]


def test_a_batch_decodes_together_and_each_prompt_is_prefilled_once(hf, monkeypatch) -> None:
    calls = count_forwards(hf, monkeypatch)
    reqs = [GenRequest(prompt=p, n=4, seed=10 * i, stop=["\n"], max_tokens=40) for i, p in enumerate(PROMPTS)]
    results = asyncio.run(hf.generate(reqs))
    longest = max(len(c.token_ids) for r in results for c in r.completions)
    assert calls[0] == len(PROMPTS)  # one prefill row per prompt, not per sample
    assert calls[1] == 4 * len(PROMPTS)  # then every sample decodes in the same pass
    assert len(calls) == longest  # one pass per token of the longest sample; ended samples leave
    assert calls[1:] == sorted(calls[1:], reverse=True) and calls[-1] < calls[1]
    # Each sample its own stream: a confident model writes some first steps alike, not all.
    assert sum(len({tuple(c.token_ids) for c in r.completions}) > 1 for r in results) >= len(PROMPTS) // 2
    for r in results:
        assert all(c.text.endswith("\n") and c.finish_reason == "stop" for c in r.completions)


def test_a_seeded_request_samples_the_same_whatever_shares_its_batch(hf) -> None:
    from ttc.backends.hf import HFBackend

    reqs = [GenRequest(prompt=p, n=3, seed=100 + i, max_tokens=30) for i, p in enumerate(PROMPTS)]
    reqs.append(GenRequest(prompt=PROMPTS[0], temperature=0.0, max_tokens=30))
    together = asyncio.run(hf.generate(reqs))
    alone = [asyncio.run(hf.generate([r]))[0] for r in reversed(reqs)][::-1]
    assert tokens(together) == tokens(alone)
    small = HFBackend(str(POLICY_PATH), seed=3, device="cpu", dtype="float32", max_num_seqs=5)
    assert tokens(asyncio.run(small.generate(reqs))) == tokens(together)  # split over passes of 5
    # Unseeded requests draw fresh streams from the backend's own seed.
    twice = asyncio.run(hf.generate([GenRequest(prompt=PROMPTS[1], max_tokens=30)] * 2))
    assert tokens(twice)[0] != tokens(twice)[1]


def test_samples_follow_the_model_distribution_at_temperature_and_top_p(hf) -> None:
    import torch

    prompt = "Q:"  # an open first token (entropy 2.3 nats): the arithmetic after it is near certain
    ids = hf.encode(prompt)
    with torch.no_grad():
        logits = hf.model(torch.tensor([ids])).logits[0, -1].float()
    draws = 4000  # sampling noise in the total variation: about 0.045 over this many draws at 2.5
    for temperature, other in ((1.0, 2.5), (2.5, 1.0)):
        (res,) = asyncio.run(hf.generate([GenRequest(prompt=prompt, n=draws, seed=1, temperature=temperature,
                                                     max_tokens=1)]))
        seen = Counter(c.token_ids[0] for c in res.completions)

        def tv(t: float, seen: Counter = seen) -> float:
            want = torch.softmax(logits / t, -1).tolist()
            return 0.5 * sum(abs(seen[k] / draws - w) for k, w in enumerate(want))

        assert tv(temperature) < 0.07 < 0.2 < tv(other), (temperature, tv(temperature), tv(other))
    # A nucleus smaller than the likeliest token keeps that token alone: greedy.
    (nucleus,) = asyncio.run(hf.generate([GenRequest(prompt=prompt, n=20, seed=2, top_p=1e-6, max_tokens=1)]))
    assert {c.token_ids[0] for c in nucleus.completions} == {int(logits.argmax())}


def test_log_probabilities_and_scores_match_one_request_at_a_time(hf) -> None:
    import torch

    (res,) = asyncio.run(hf.generate([GenRequest(prompt=PROMPTS[2], n=2, seed=4, max_tokens=20, logprobs=True)]))
    ids = hf.encode(PROMPTS[2])
    for c in res.completions:  # the model's own log-probabilities of the sampled tokens
        with torch.no_grad():
            full = torch.log_softmax(hf.model(torch.tensor([ids + c.token_ids])).logits[0].float(), -1)
        want = [full[len(ids) - 1 + k, t].item() for k, t in enumerate(c.token_ids)]
        assert c.logprobs == pytest.approx(want, abs=1e-4)
        assert c.cumulative_logprob == pytest.approx(sum(want), abs=1e-3)
    reqs = [ScoreRequest(prompt=p, continuation=cont) for p in PROMPTS for cont in ("12+7=19\n", "A")]
    batched = asyncio.run(hf.score(reqs))
    for r, got in zip(reqs, batched, strict=True):
        (one,) = asyncio.run(hf.score([r]))
        assert len(got.token_logprobs) == len(hf.encode_continuation(r.continuation))
        assert got.token_logprobs == pytest.approx(one.token_logprobs, abs=1e-4)
        assert all(math.isfinite(x) and x <= 0 for x in got.token_logprobs)
