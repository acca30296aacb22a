"""The backend protocol: a handful of async methods every engine adapter implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ttc.types import Completion, GenRequest, GenResult, KVGeometry, ScoreRequest, ScoreResult


class BackendError(RuntimeError):
    """A request the engine refused (e.g. a prompt longer than the context)."""


class EngineUnavailable(BackendError):
    """No engine could take a batch at all (every replica down), as against one request refused."""


class Backend(ABC):
    """One engine. Strategies call ``generate`` and ``score`` from many coroutines
    at once; the backend gets their requests to the engine together.

    ``block_size`` is the prefix-cache granularity (1 where hits are token-level);
    ``num_devices`` multiplies engine busy time into device-seconds.
    """

    name: str = "backend"
    tokenizer: Any
    kv: KVGeometry
    block_size: int = 1
    num_devices: int = 1
    max_model_len: int | None = None

    @abstractmethod
    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Continuations for each request: token ids, text, log-probabilities,
        finish reason and the prefix-cached prompt tokens the engine reported."""

    @abstractmethod
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Per-token log-probabilities of each continuation given its prompt."""

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        return list(self.tokenizer(prompt).input_ids)

    def encode_continuation(self, text: str | list[int]) -> list[int]:
        if isinstance(text, list):
            return text
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Generated tokens' text, as every backend returns it (special tokens left out)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def one_token_stops(self, stop: Sequence[str]) -> list[int]:
        """The token ids of those stop strings that one token alone can write: a single ASCII
        character that no other token's text holds (a character-level tokenizer's ``"\\n"``).
        An engine can stop at them by itself, without the text. Any other stop is found in the
        text: a BPE tokenizer merges ``"\\n\\n"`` with what comes before it (``".\\n\\n"`` is one
        token), and the engine would write past the step."""
        cache: dict[tuple[str, ...], list[int]] = self.__dict__.setdefault("_one_token_stops", {})
        key = tuple(stop)
        if key not in cache:  # a handful of step delimiters per backend; tokenizing is per request
            cache[key] = [t for t in map(self._sole_writer, key) if t is not None]
        return cache[key]

    def _sole_writer(self, stop: str) -> int | None:
        """The token that is ``stop``, if ``stop`` is one ASCII character and no other token's
        text holds it."""
        if len(stop) != 1 or not stop.isascii():
            return None
        if "_pieces_text" not in self.__dict__:  # every token's text, once per backend
            size = len(self.tokenizer)
            self.__dict__["_pieces_text"] = self.tokenizer.batch_decode([[i] for i in range(size)])
        pieces = self.__dict__["_pieces_text"]
        holders = [i for i, text in enumerate(pieces) if stop in text]
        return holders[0] if len(holders) == 1 and pieces[holders[0]] == stop else None

    def end_at_stop(self, c: Completion, stop: Sequence[str]) -> Completion:
        """``c`` ended at its first stop string (kept in the text), token ids and text alike.

        An engine stops at the token that completes a stop string, and a BPE token can write
        past it (``"\\n\\n\\n"`` for a ``"\\n\\n"`` stop): vLLM cuts the text but keeps the token,
        the transformers backend and SGLang keep both. A tree's branch extends its parent's
        token ids, which must write exactly the parent's text; a step must end at its stop.
        """
        if not stop or c.finish_reason != "stop" or not c.token_ids or c.token_ids[-1] in self.one_token_stops(stop):
            return c
        text = _cut(c.text, stop)
        written = self.decode(c.token_ids)
        end = len(_cut(written, stop))
        if end == len(written):
            return c if text == c.text else c.model_copy(update={"text": text})
        # Keep the tokens that end at or before the cut; write the rest of the stop anew.
        keep = len(c.token_ids) - 1
        while keep and len(self.decode(c.token_ids[:keep])) > end:
            keep -= 1
        head = c.token_ids[:keep]
        ids = head + self.encode_continuation(written[len(self.decode(head)) : end])
        logprobs = c.logprobs[: len(head)] if c.logprobs is not None else None
        return c.model_copy(update={"text": text, "token_ids": ids, "logprobs": logprobs})

    def check_length(self, ids: list[int], max_tokens: int = 0) -> None:
        if self.max_model_len is not None and len(ids) + max(max_tokens, 1) > self.max_model_len:
            raise BackendError(
                f"prompt of {len(ids)} tokens + {max_tokens} new exceeds max_model_len={self.max_model_len}"
            )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine."""


def _cut(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the end of its first stop string (all of it where none occurs)."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


def apportion(seconds: float, weights: list[int]) -> list[float]:
    """Split a batch's busy time over its requests in proportion to computed tokens."""
    total = sum(weights)
    if total <= 0:
        return [seconds / max(1, len(weights))] * len(weights)
    return [seconds * w / total for w in weights]
