import pytest

from ttc.backends.base import apportion
from ttc.ledger import Ledger, PrefixTrie, shared_tokens
from ttc.models import kv_geometry
from ttc.types import Completion, GenResult, KVGeometry

R1_70B = {"num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192}


def test_kv_bytes_reproduce_the_70b_figures() -> None:
    kv = kv_geometry(R1_70B, "fp16")
    assert kv.bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680
    assert kv.bytes_per_token * 10_000 / 1e9 == pytest.approx(3.28, abs=0.005)
    assert kv.bytes_per_token * 30_000 / 1e9 == pytest.approx(9.8, abs=0.05)
    assert kv_geometry(R1_70B, "fp8").bytes_per_token == kv.bytes_per_token / 2


def test_trie_counts_shared_prefixes_once() -> None:
    t = PrefixTrie()
    assert t.insert([1, 2, 3]) == 0
    assert t.insert([1, 2, 4]) == 2
    assert t.size == 4
    assert t.match([1, 2, 3, 9]) == 3
    assert shared_tokens([[1, 2, 3], [1, 2, 4], [5]]) == 5


def _res(prompt: list[int], outs: list[list[int]], cached: int = 0, batch: int = 1, secs: float = 0.0) -> GenResult:
    return GenResult(
        prompt_token_ids=prompt,
        cached_tokens=cached,
        completions=[Completion(token_ids=o, text="") for o in outs],
        batch_id=batch,
        engine_seconds=secs,
    )


def test_ledger_matches_hand_computation() -> None:
    kv = KVGeometry(num_layers=2, num_kv_heads=2, head_dim=4, dtype_bytes=2)  # 2 x 2 x 2 x 4 x 2 = 64 B/token
    led = Ledger(kv, block_size=4)
    prompt = list(range(10))
    # call 1: n=3 samples of 5 tokens from a 10-token prompt
    led.record([_res(prompt, [[100, 101, 102, 103, 104], [100, 101, 200, 201, 202], [300, 301, 302, 303, 304]],
                     secs=0.5)])
    # call 2: a branch extending sample 1 (parent ids + its step), the engine reports 12 cached
    branch = [*prompt, 100, 101, 102, 103, 104]
    led.record([_res(branch, [[7, 8]], cached=12, batch=2, secs=0.25)])
    s = led.summary(usd_per_gpu_hour=3600.0)
    assert s["prompt_tokens"] == 10 + 15
    assert s["generated_tokens"] == 15 + 2
    assert s["cached_tokens"] == 12
    assert s["computed_prefill_tokens"] == 25 - 12
    # ideal: the branch's first 14 tokens were computed before (its last sampled token was not)
    assert s["ideal_cached_tokens_token"] == 14
    assert s["ideal_cached_tokens"] == 12  # 14 rounded down to the 4-token block
    # KV peak: call 1 holds 10 shared + 5 + 3 + 5 distinct = 23 tokens; unshared 3 x 15 = 45
    assert s["kv_peak_tokens"] == 23
    assert s["kv_peak_tokens_unshared"] == 45
    assert s["kv_peak_bytes"] == 23 * 64
    assert s["kv_peak_bytes_unshared"] == 45 * 64
    assert s["gpu_seconds"] == pytest.approx(0.75)
    assert s["usd"] == pytest.approx(0.75)  # $3600/h = $1/s


def test_verifier_work_is_kept_apart() -> None:
    kv = KVGeometry(num_layers=1, num_kv_heads=1, head_dim=1, dtype_bytes=1)  # 2 B/token
    prm_kv = KVGeometry(num_layers=2, num_kv_heads=1, head_dim=1, dtype_bytes=1)  # 4 B/token
    led = Ledger(kv, verifier_kv=prm_kv)
    led.record([_res([1, 2, 3], [[4]], secs=1.0)])
    led.record([_res([1, 2, 3, 4, 9], [], secs=0.5)], role="verifier")
    s = led.summary(usd_per_gpu_hour=0.0)
    assert s["prompt_tokens"] == 3 and s["gpu_seconds"] == 1.0
    assert s["verifier_tokens"] == 5 and s["verifier_gpu_seconds"] == 0.5
    # each model's KV at its own bytes per token; the policy's figures never see the verifier's
    assert s["kv_peak_bytes"] == 4 * 2 and s["verifier_kv_peak_bytes"] == 5 * 4
    assert s["requests"] == 1 and s["verifier_requests"] == 1


def test_ideal_cache_is_what_the_engine_computed_before_at_the_engines_block_size() -> None:
    kv = KVGeometry(num_layers=1, num_kv_heads=1, head_dim=1, dtype_bytes=1)
    led = Ledger(kv, block_size=4)
    prompt = list(range(10))
    led.record([_res(prompt, [[100, 101, 102, 103, 104]])])
    # A child of the sample, as tree search sends it: the sample's last token has no KV yet.
    led.record([_res([*prompt, 100, 101, 102, 103, 104, 7, 8], [[9]])])
    assert led.usage().ideal_cached_tokens_token == 14
    # The same prompt again: its last token is computed anyway, to predict the next.
    led.record([_res(prompt, [[5]])])
    assert led.usage().ideal_cached_tokens_token == 14 + 9
    assert led.usage().ideal_cached_tokens == 12 + 8
    # A call on an engine with another cache block rounds to that engine's block.
    led.record([_res([*prompt, 5], [[6]])], block_size=3)
    assert led.usage().ideal_cached_tokens_token == 14 + 9 + 10
    assert led.usage().ideal_cached_tokens == 12 + 8 + 9


def test_requests_in_one_batch_share_the_kv_peak() -> None:
    kv = KVGeometry(num_layers=1, num_kv_heads=1, head_dim=1, dtype_bytes=1)
    led = Ledger(kv)
    led.record([_res([1, 2, 3], [[4, 5]], batch=7)])
    led.record([_res([1, 2, 3], [[6, 7]], batch=7)])  # same engine batch, separate call
    assert led.usage().kv_peak_tokens == 7
    assert led.usage().kv_peak_tokens_unshared == 10


def test_apportion_by_computed_tokens() -> None:
    assert apportion(1.0, [1, 3]) == [0.25, 0.75]
    assert apportion(1.0, [0, 0]) == [0.5, 0.5]
