"""The transformers backend batches like an engine: prompts prefilled together, each once
for its samples, every sample on a random stream of its own, and the blocks of every
sequence kept in a prefix cache across requests."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest

from strategies.beam_search import BeamSearch
from strategies.dvts import DVTS
from strategies.mcts import MCTS
from ttc.datasets import arith_problems
from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.runner import run_queries, summarize
from ttc.tasks import arith
from ttc.types import GenRequest, ScoreRequest
from verifiers.math import equivalent
from verifiers.prm import PRMVerifier

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


def backend(**kwargs):
    from ttc.backends.hf import HFBackend

    return HFBackend(str(POLICY_PATH), seed=3, device="cpu", dtype="float32", **kwargs)


def test_a_branch_reads_its_parents_blocks_and_comes_out_as_without_them() -> None:
    cached, uncached = backend(block_size=16), backend(prefix_cache_gib=0)
    assert uncached.block_size == 1  # no cache: the ledger's ideal is token-level
    greedy = GenRequest(prompt=PROMPTS[0], temperature=0.0, max_tokens=60)  # a whole solution
    (parent,) = asyncio.run(cached.generate([greedy]))
    assert parent.cached_tokens == 0
    # A child is its parent's tokens plus its own, as tree search sends it: the parent's
    # generated tokens were cached too, all but the last (never fed to the model).
    branch = parent.prompt_token_ids + parent.completions[0].token_ids
    assert len(branch) > 40
    child = GenRequest(prompt=branch, n=3, seed=7, max_tokens=30, logprobs=True)
    (got,), (want,) = asyncio.run(cached.generate([child])), asyncio.run(uncached.generate([child]))
    assert got.cached_tokens == (len(branch) - 1) // 16 * 16 and want.cached_tokens == 0
    assert tokens([got]) == tokens([want])
    for a, b in zip(got.completions, want.completions, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    # Scoring reads the blocks of the child's samples too, never the position whose logits
    # predict the continuation.
    judged = [ScoreRequest(prompt=branch + c.token_ids, continuation="A:") for c in got.completions]
    judged.append(ScoreRequest(prompt=branch[:32], continuation=branch[32:40]))  # a prompt of whole blocks
    scored, plain = asyncio.run(cached.score(judged)), asyncio.run(uncached.score(judged))
    assert [s.cached_tokens for s in scored[:3]] == [(len(r.prompt) - 1) // 16 * 16 for r in judged[:3]]
    assert scored[3].cached_tokens == 16  # the 32nd token's logits predict the continuation
    for a, b in zip(scored, plain, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    # What is scored is stored: a second judgement after a new prompt reads its blocks.
    fresh = [ScoreRequest(prompt=PROMPTS[3] * 3, continuation=x) for x in ("A:1", "A:2")]
    first, second = (asyncio.run(cached.score([r]))[0] for r in fresh)
    assert first.cached_tokens == 0 and second.cached_tokens == (len(cached.encode(fresh[1].prompt)) - 1) // 16 * 16


@pytest.mark.parametrize(
    "make",
    [
        lambda prm: BeamSearch(n=8, width=4, verifier=prm),
        lambda prm: DVTS(n=8, width=2, verifier=prm),  # four subtrees send their first prompt side by side
        lambda prm: MCTS(simulations=8, verifier=prm),
    ],
    ids=["beam_search", "dvts", "mcts"],
)
def test_tree_search_hits_the_prefix_cache_and_answers_as_without_it(make) -> None:
    from ttc.backends.hf import HFBackend

    problems = arith_problems(limit=6, steps=4, seed=31)

    async def grade(problem, answer) -> bool:
        return equivalent(problem.answer, answer.answer)

    def solve(gib: float) -> list[dict]:
        prm = HFBackend(str(PRM_PATH), device="cpu", dtype="float32", prefix_cache_gib=gib)
        policy = backend(prefix_cache_gib=gib)
        return asyncio.run(run_queries(problems, make(PRMVerifier(prm)), policy, grade, seed=1, progress=False))

    with_cache, without = solve(1.0), solve(0.0)
    s = summarize(with_cache)
    assert s["errors"] == 0 and s["ideal_cached_tokens"] > 0
    assert s["cached_tokens"] >= 0.95 * s["ideal_cached_tokens"], s
    assert summarize(without)["cached_tokens"] == 0
    assert [r["completion"] for r in with_cache] == [r["completion"] for r in without]


def test_the_cache_keeps_the_recently_used_blocks_within_its_capacity() -> None:
    import torch

    from ttc.backends.prefix_cache import PrefixCache

    cache = PrefixCache(block_size=2, capacity=6)

    def kv(ids: list[int]) -> list:
        return [torch.tensor([[[float(t)] for t in ids]])]  # one layer, one head, head dim 1

    def hit(ids: list[int]) -> list[int]:
        blocks = cache.lookup(ids, len(ids))
        return [int(x) for b in blocks for x in b.keys[0].flatten()]

    a, b, c = [1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]
    cache.store([*a, 5, 6], 0, kv(a), kv(a))  # KV for four tokens (a sample's last is never fed)
    assert hit([*a, 5, 6]) == a
    cache.store(b, 0, kv(b), kv(b))
    assert len(cache) == 6  # over capacity: the least recent tip, a's second block, left
    assert hit(a) == [1, 2] and hit(b) == b
    assert hit([5, 6, 7]) == [5, 6] and len(cache.lookup(b, 3)) == 1  # whole blocks, within the limit
    cache.store(b + c, 4, kv(c), kv(c))  # c's blocks hang from b's; a's root and then c's tip leave
    assert hit(b + c) == [*b, 9, 9] and hit(a) == [] and len(cache) == 6
    cache.store([7, 7, 1, 2], 2, kv([1, 2]), kv([1, 2]))  # its first block is not cached: nothing to hang from
    assert hit([7, 7, 1, 2]) == []


def test_a_model_with_sliding_window_layers_runs_without_the_cache(tmp_path) -> None:
    import shutil

    from transformers import MistralConfig, MistralForCausalLM

    from ttc.backends.hf import HFBackend

    for f in POLICY_PATH.glob("tokenizer*"):
        shutil.copy(f, tmp_path)
    config = MistralConfig(vocab_size=102, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    hf = HFBackend(str(tmp_path), device="cpu")
    assert hf.prefix.capacity == 0 and hf.block_size == 1
    req = GenRequest(prompt=PROMPTS[0] * 2, temperature=0.0, max_tokens=5)
    first, second = asyncio.run(hf.generate([req])), asyncio.run(hf.generate([req]))
    assert second[0].cached_tokens == 0 and tokens(first) == tokens(second)


def test_a_prompt_repeated_in_one_pass_is_prefilled_once_with_the_cache_on(monkeypatch) -> None:
    """As DVTS's subtrees first send their query's prompt side by side: an engine computes
    it once and reports the repeats cached, and so does this backend."""
    prompt = PROMPTS[0] * 3  # 45 tokens: two whole blocks
    reqs = [GenRequest(prompt=prompt, n=2, seed=s, max_tokens=8) for s in (1, 2)]
    reqs.append(GenRequest(prompt=PROMPTS[1], n=2, seed=3, max_tokens=8))
    for gib, rows, cached in ((1.0, 2, [0, 32, 0]), (0.0, 3, [0, 0, 0])):
        hf = backend(prefix_cache_gib=gib)
        calls = count_forwards(hf, monkeypatch)
        together = asyncio.run(hf.generate(reqs))
        assert calls[0] == rows and calls[1] == 6
        assert [r.cached_tokens for r in together] == cached
        alone = [asyncio.run(backend(prefix_cache_gib=0).generate([r]))[0] for r in reqs]
        assert tokens(together) == tokens(alone)


def test_a_sequence_scored_twice_in_one_pass_is_computed_once_with_the_cache_on(monkeypatch) -> None:
    """A PRM judging several samples that open with the same step: one row for them all."""
    judged = ScoreRequest(prompt=PROMPTS[0] * 3, continuation="7")  # 45 prompt tokens
    reqs = [judged, judged, ScoreRequest(prompt=PROMPTS[1], continuation="12")]  # the repeat before another
    for gib, rows, cached in ((1.0, 2, [0, 32, 0]), (0.0, 3, [0, 0, 0])):
        hf = backend(prefix_cache_gib=gib)
        calls = count_forwards(hf, monkeypatch)
        together = asyncio.run(hf.score(reqs))
        assert calls == [rows]
        assert [r.cached_tokens for r in together] == cached
        alone = [asyncio.run(backend(prefix_cache_gib=0).score([r]))[0] for r in reqs]
        for t, a in zip(together, alone, strict=True):
            assert t.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-5)


def test_the_stop_check_skips_only_tokens_that_cannot_end_a_stop(hf) -> None:
    colon, letter = hf.encode_continuation(":"), hf.encode_continuation("A")
    assert hf._may_end("A:", colon[0]) and not hf._may_end("A:", letter[0])
    assert hf._may_end("A ", letter[0]) and hf._may_end("é\n", letter[0])  # always looked for: see _may_end
    # Two-character stops end the sample at their second character, found however it came.
    reqs = [GenRequest(prompt=p, n=4, seed=i, stop=["A:", "=1"], max_tokens=80) for i, p in enumerate(PROMPTS[:4])]
    for r in asyncio.run(hf.generate(reqs)):
        for c in r.completions:
            assert c.finish_reason == "stop" and c.text.endswith(("A:", "=1")), c.text
            assert "A:" not in c.text[:-1] and "=1" not in c.text[:-1]


def test_mcts_searches_the_same_whatever_else_shares_its_batches() -> None:
    # Logits, hence step log-probabilities (PUCT's priors), move in the last bits with the
    # batch. Twin children (one step sampled twice) would tie up to that noise, and which
    # twin a search followed would turn on what else was in flight.
    from ttc.backends.hf import HFBackend

    problems = arith_problems(limit=16, steps=6, seed=2024)
    policy = backend(max_num_seqs=1024)
    prm = PRMVerifier(HFBackend(str(PRM_PATH), device="cpu", dtype="float32", max_num_seqs=1024))

    async def grade(problem, answer) -> bool:
        return equivalent(problem.answer, answer.answer)

    def completions(concurrency: int) -> dict[str, str]:
        mcts = MCTS(simulations=16, branching=4, parallel=1, verifier=prm)
        records = asyncio.run(run_queries(problems, mcts, policy, grade, concurrency=concurrency, seed=2024,
                                          progress=False))
        return {r["id"]: r["completion"] for r in records}

    assert completions(16) == completions(1)
