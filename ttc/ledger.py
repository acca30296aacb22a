"""Per-query compute accounting: tokens, prefix-cache hits, KV-cache peak, GPU-seconds, dollars.

Generation and verification (reward models, judges) are kept apart: a query's
ledger has one ``Usage`` per role.

KV peak. A query's live sequences are those of its requests in one engine
batch: each sequence (prompt + continuation) holds KV while it runs, and the
engine frees it when the request ends. With prefix sharing the batch holds the
union of those sequences as a token prefix tree; without it, the sum of their
lengths. The peak is the largest over the query's batches. Bytes are tokens times
the model's ``bytes_per_token`` (2 x layers x KV heads x head dim x dtype bytes):
layers with a sliding window count every token, so for such models (Gemma 2 and 3,
gpt-oss) the peak is an upper bound.

Ideal cache. Every token whose KV the engine already computed for this query
(earlier prompts, earlier continuations but their last sampled token) could be
served from an ideal prefix cache. ``ideal_cached_tokens`` rounds each request's
ideal hit down to the engine's cache block, the granularity at which vLLM caches;
``ideal_cached_tokens_token`` is the token-level figure beside it.
"""

from __future__ import annotations

from pydantic import BaseModel

from ttc.types import GenResult, KVGeometry, Role


class PrefixTrie:
    """Token-level prefix tree that counts its nodes."""

    __slots__ = ("root", "size")

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}
        self.size = 0

    def match(self, seq: list[int]) -> int:
        """Length of the longest prefix of ``seq`` already in the tree."""
        node, n = self.root, 0
        for tok in seq:
            nxt = node.get(tok)
            if nxt is None:
                break
            node, n = nxt, n + 1
        return n

    def insert(self, seq: list[int]) -> int:
        """Insert ``seq``; return how many of its tokens were already present."""
        node, hit = self.root, 0
        for tok in seq:
            nxt = node.get(tok)
            if nxt is None:
                nxt = node[tok] = {}
                self.size += 1
            else:
                hit += 1
            node = nxt
        return hit


def shared_tokens(seqs: list[list[int]]) -> int:
    """Tokens held by ``seqs`` with common prefixes stored once."""
    trie = PrefixTrie()
    for s in seqs:
        trie.insert(s)
    return trie.size


class Usage(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    ideal_cached_tokens: int = 0
    ideal_cached_tokens_token: int = 0
    kv_peak_tokens: int = 0
    kv_peak_tokens_unshared: int = 0
    gpu_seconds: float = 0.0

    @property
    def computed_prefill_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


class _RoleState:
    """Book-keeping behind one role's ``Usage``: what the cache could hold, what is live."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.seen = PrefixTrie()
        # Per engine batch: its live sequences as a shared tree, and their summed length.
        self.batches: dict[int, tuple[PrefixTrie, list[int]]] = {}


class Ledger:
    """Accumulates one query's usage as results arrive from the backend."""

    def __init__(self, kv: KVGeometry, block_size: int = 1, verifier_kv: KVGeometry | None = None) -> None:
        self.kv = kv
        self.verifier_kv = verifier_kv or kv
        self.block_size = max(1, block_size)
        self._roles: dict[Role, _RoleState] = {"policy": _RoleState(), "verifier": _RoleState()}

    def usage(self, role: Role = "policy") -> Usage:
        return self._roles[role].usage

    def record(self, results: list[GenResult], role: Role = "policy", block_size: int | None = None) -> None:
        """Account one backend call's results (several may share an engine batch)."""
        state = self._roles[role]
        u = state.usage
        block = self.block_size if block_size is None else max(1, block_size)
        for r in results:
            prompt = r.prompt_token_ids
            u.requests += 1
            u.prompt_tokens += len(prompt)
            u.cached_tokens += r.cached_tokens
            u.gpu_seconds += r.engine_seconds
            # The engine always computes at least the last prompt token.
            ideal = max(0, min(state.seen.match(prompt), len(prompt) - 1))
            u.ideal_cached_tokens_token += ideal
            u.ideal_cached_tokens += ideal // block * block
            state.seen.insert(prompt)
            tree, unshared = state.batches.setdefault(r.batch_id, (PrefixTrie(), [0]))
            seqs = [prompt + c.token_ids for c in r.completions] or [prompt]
            for c in r.completions:
                u.generated_tokens += len(c.token_ids)
                # The last sampled token is never fed back, so it has no KV yet.
                state.seen.insert(prompt + c.token_ids[:-1])
            for s in seqs:
                tree.insert(s)
                unshared[0] += len(s)
            u.kv_peak_tokens = max(u.kv_peak_tokens, tree.size)
            u.kv_peak_tokens_unshared = max(u.kv_peak_tokens_unshared, unshared[0])

    def summary(self, usd_per_gpu_hour: float) -> dict[str, float | int]:
        """Flat figures for ``results.jsonl``; verifier work carries a ``verifier_`` prefix."""
        p, v = self.usage("policy"), self.usage("verifier")
        bpt, vbpt = self.kv.bytes_per_token, self.verifier_kv.bytes_per_token
        return {
            "prompt_tokens": p.prompt_tokens,
            "generated_tokens": p.generated_tokens,
            "cached_tokens": p.cached_tokens,
            "computed_prefill_tokens": p.computed_prefill_tokens,
            "ideal_cached_tokens": p.ideal_cached_tokens,
            "ideal_cached_tokens_token": p.ideal_cached_tokens_token,
            "requests": p.requests,
            "kv_peak_tokens": p.kv_peak_tokens,
            "kv_peak_tokens_unshared": p.kv_peak_tokens_unshared,
            "kv_peak_bytes": int(p.kv_peak_tokens * bpt),
            "kv_peak_bytes_unshared": int(p.kv_peak_tokens_unshared * bpt),
            "gpu_seconds": p.gpu_seconds,
            "usd": p.gpu_seconds * usd_per_gpu_hour / 3600,
            "verifier_tokens": v.prompt_tokens + v.generated_tokens,
            "verifier_cached_tokens": v.cached_tokens,
            "verifier_requests": v.requests,
            "verifier_kv_peak_bytes": int(v.kv_peak_tokens * vbpt),
            "verifier_gpu_seconds": v.gpu_seconds,
            "verifier_usd": v.gpu_seconds * usd_per_gpu_hour / 3600,
        }
