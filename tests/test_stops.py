"""A completion ends at its first stop string, in its text and its token ids alike, whatever
the engine did with a BPE token that writes past the stop."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from strategies.tree import expand, root
from ttc.backends.base import Backend
from ttc.context import QueryContext
from ttc.types import Completion, GenRequest, GenResult, KVGeometry, Problem

# A BPE vocabulary in which the stop "\n\n" has tokens that write past it, as real ones do.
VOCAB = {"a": 0, "b": 1, ".": 2, "\n": 3, "Q": 4, "\n\n": 5, "\n\nQ": 6, ".\n\n": 7, "\n\n\n": 8, "</s>": 9}
MERGES = [("\n", "\n"), ("\n\n", "Q"), ("\n\n", "\n"), (".", "\n\n")]
A, B, DOT, NL, Q, NL2, NL2Q, DOT_NL2, NL3, EOS = range(10)


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    t = Tokenizer(models.BPE(vocab=VOCAB, merges=MERGES))
    t.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>")


class CannedBackend(Backend):
    """Returns the same completion for every request, as an engine would have written it."""

    def __init__(self, completion: Completion) -> None:
        self.tokenizer = bpe_tokenizer()
        self.kv = KVGeometry(num_layers=1, num_kv_heads=1, head_dim=1)
        self.completion = completion

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return [
            GenResult(prompt_token_ids=self.encode(r.prompt), completions=[self.completion] * r.n) for r in requests
        ]

    async def score(self, requests):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_the_vocabulary_writes_past_the_stop() -> None:
    tok = bpe_tokenizer()
    assert tok("ab\n\nQ", add_special_tokens=False).input_ids == [A, B, NL2Q]
    assert tok("ab.\n\n", add_special_tokens=False).input_ids == [A, B, DOT_NL2]


@pytest.mark.parametrize(
    ("ids", "text", "want_ids", "want_text"),
    [
        # vLLM: the text cut at the stop, the token that wrote past it kept
        ([A, B, NL2Q], "ab\n\n", [A, B, NL2], "ab\n\n"),
        ([A, B, NL3], "ab\n\n", [A, B, NL2], "ab\n\n"),
        # the transformers backend and SGLang: the text decoded from the tokens
        ([A, B, NL2Q], "ab\n\nQ", [A, B, NL2], "ab\n\n"),
        ([A, NL2, B, NL2], "a\n\nb\n\n", [A, NL2], "a\n\n"),
        # a token that ends exactly at the stop: nothing to cut
        ([A, B, DOT_NL2], "ab.\n\n", [A, B, DOT_NL2], "ab.\n\n"),
    ],
)
def test_a_completion_ends_at_its_first_stop(ids: list[int], text: str, want_ids: list[int], want_text: str) -> None:
    backend = CannedBackend(Completion(token_ids=[], text=""))
    got = backend.end_at_stop(Completion(token_ids=ids, text=text, finish_reason="stop"), ["\n\n"])
    assert (got.token_ids, got.text) == (want_ids, want_text)
    assert backend.decode(got.token_ids) == got.text


def test_a_completion_that_did_not_stop_is_left_whole() -> None:
    backend = CannedBackend(Completion(token_ids=[], text=""))
    for c in (
        Completion(token_ids=[A, B, NL2Q], text="ab\n\nQ", finish_reason="length"),
        Completion(token_ids=[A, B, EOS], text="ab", finish_reason="stop"),
    ):
        assert backend.end_at_stop(c, ["\n\n"]) == c
    c = Completion(token_ids=[A, NL2Q], text="a\n\nQ", finish_reason="stop")
    assert backend.end_at_stop(c, []) == c


async def test_a_branch_extends_exactly_its_parents_text() -> None:
    """A step whose last token wrote past the delimiter is still a step (not a finished chain),
    and its child is sent as the tokens of its text; the ledger keeps what the engine computed."""
    engine = CannedBackend(Completion(token_ids=[A, B, NL2Q], text="ab\n\nQ", finish_reason="stop"))
    ctx = QueryContext(Problem(id="p", prompt="Q", answer="1"), engine, step_delimiter="\n\n")
    [[child]] = await expand(ctx, [root(ctx)], 1)
    assert child.steps == ["ab\n\n"]
    assert not child.done
    assert child.ids == [Q, A, B, NL2]
    assert engine.decode(child.ids) == ctx.prompt + child.text
    assert ctx.ledger.summary(0.0)["generated_tokens"] == 3
