"""Generation requests: the bounds every backend shares, and which stop strings an engine
may stop at by token id alone, without the text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from tests.fakes import ScriptedBackend
from ttc.backends.vllm import sampling_kwargs
from ttc.types import GenRequest


def bpe_backend() -> ScriptedBackend:
    """The stand-in engine with a BPE tokenizer that merges a newline into what precedes it,
    as byte-level BPE vocabularies do (``".\\n"``, ``"\\n\\n"``, ``".\\n\\n"``: one token each)."""
    vocab = {"a": 0, ".": 1, "\n": 2, ".\n": 3, "\n\n": 4, ".\n\n": 5}
    merges = [(".", "\n"), ("\n", "\n"), (".\n", "\n")]
    backend = ScriptedBackend()
    backend.tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab, merges)))
    return backend


def test_a_character_only_its_own_token_writes_stops_in_the_engine() -> None:
    reference = ScriptedBackend()  # character-level: no other token holds a newline
    newline = reference.encode_continuation("\n")
    assert reference.one_token_stops(["\n"]) == newline
    assert reference.one_token_stops(["\n", "5\n"]) == newline  # the two-character stop: by its text
    params = sampling_kwargs(GenRequest(prompt="Q:1+2=?\n", stop=["\n"]), reference.one_token_stops(["\n"]))
    assert params["stop"] is None and params["stop_token_ids"] == newline and not params["detokenize"]


def test_a_stop_that_merged_tokens_also_write_is_found_in_the_text() -> None:
    bpe = bpe_backend()
    assert bpe.encode_continuation("a.\n\na") == [0, 5, 0]  # the step's end is inside one token
    assert bpe.encode_continuation("\n") == [2] and bpe.encode_continuation("\n\n") == [4]
    assert bpe.one_token_stops(["\n"]) == [] and bpe.one_token_stops(["\n\n"]) == []
    assert bpe.one_token_stops(["a"]) == [0]  # held by no other token
    params = sampling_kwargs(GenRequest(prompt="a", stop=["\n\n"]), bpe.one_token_stops(["\n\n"]))
    assert params["stop"] == ["\n\n"] and params["stop_token_ids"] is None and params["detokenize"]
    # The one token that holds the character, but writes more than it: the engine would stop past it.
    merged = ScriptedBackend()
    merged.tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "\nb": 1})))
    assert merged.one_token_stops(["\n"]) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 0), ("max_tokens", 0), ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("stop", [""])],
)
def test_a_request_out_of_every_engines_bounds_is_refused_when_made(field: str, value: object) -> None:
    # Once made, each backend would meet it its own way: an IndexError, empty completions,
    # one token sampled from nothing, a match of the empty string everywhere.
    with pytest.raises(ValidationError, match=field):
        GenRequest(prompt="Q:1+2=?\n", **{field: value})
