"""Typed records shared by backends, strategies, verifiers and the runner."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, NonNegativeFloat, PositiveInt, StringConstraints

Role = Literal["policy", "verifier"]


AnswerFormat = Literal["reference", "boxed", "gsm8k", "program"]


class Problem(BaseModel):
    """One query: what the model is asked, and how its answer is graded."""

    id: str
    prompt: str
    answer: str = ""
    kind: Literal["math", "code"] = "math"
    answer_format: AnswerFormat = "boxed"
    tests: str = ""  # hidden tests (code): graded on these
    visible_tests: str = ""  # tests a strategy may use to filter candidates
    entry_point: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


class GenRequest(BaseModel):
    """A request for ``n`` continuations of one prompt (text or token ids). The bounds are
    every engine's, checked here so that each backend meets a bad request the same way."""

    prompt: str | list[int]
    n: PositiveInt = 1
    temperature: NonNegativeFloat = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: PositiveInt = 128
    stop: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False


class Completion(BaseModel):
    token_ids: list[int]
    text: str
    cumulative_logprob: float | None = None
    logprobs: list[float] | None = None
    finish_reason: str = "stop"


class GenResult(BaseModel):
    prompt_token_ids: list[int]
    cached_tokens: int = 0
    completions: list[Completion]
    # Filled in by the backend for the ledger: which engine batch served this
    # request, and its share of that batch's busy device-seconds.
    batch_id: int = 0
    engine_seconds: float = 0.0


class ScoreRequest(BaseModel):
    """Score ``continuation`` after ``prompt``: its per-token log-probabilities."""

    prompt: str | list[int]
    continuation: str | list[int]


class ScoreResult(BaseModel):
    token_logprobs: list[float]
    prompt_token_ids: list[int]  # prompt + continuation, as the engine saw them
    cached_tokens: int = 0
    batch_id: int = 0
    engine_seconds: float = 0.0


class KVGeometry(BaseModel):
    """What one token of context costs in KV cache, from the model's config."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: float = 2.0
    # Multi-head latent attention stores one compressed vector per layer instead.
    mla_dim: int | None = None

    @property
    def bytes_per_token(self) -> float:
        if self.mla_dim is not None:
            return self.num_layers * self.mla_dim * self.dtype_bytes
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


class Verdict(BaseModel):
    """A verifier's judgement of one candidate."""

    score: float
    passed: bool | None = None
    status: str = ""  # e.g. pass / fail / timeout / error for code
    feedback: str = ""
    step_scores: list[float] | None = None
