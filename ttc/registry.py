"""Names that configs use, mapped to classes; constructor arguments checked before any engine starts."""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

STRATEGIES = {
    "cot": "strategies.cot:CoT",
    "best_of_n": "strategies.best_of_n:BestOfN",
    "beam_search": "strategies.beam_search:BeamSearch",
    "dvts": "strategies.dvts:DVTS",
    "mcts": "strategies.mcts:MCTS",
    "verify_revise": "strategies.verify_revise:VerifyRevise",
    "particle_filter": "strategies.particle_filter:ParticleFilter",
}
VERIFIERS = {
    "math": "verifiers.math:MathVerifier",
    "code": "verifiers.code:CodeVerifier",
    "prm": "verifiers.prm:PRMVerifier",
    "orm": "verifiers.orm:ORMVerifier",
    "judge": "verifiers.judge:JudgeVerifier",
    "classifier_prm": "verifiers.classifier_prm:ClassifierPRM",
}
# Verifiers that run on an engine of the run's backend kind, and the model it loads
# unless the verifier's ``model_path`` option names another: the run's PRM or its policy.
VERIFIER_ENGINES: dict[str, str] = {"prm": "prm", "orm": "prm", "judge": "policy"}
BACKENDS = {
    "vllm": "ttc.backends.vllm:VLLMBackend",
    "hf": "ttc.backends.hf:HFBackend",
    "sglang": "ttc.backends.sglang:SGLangBackend",
    "http": "ttc.backends.http:HTTPBackend",
}
# The ConfigError text for an option a strategy (or verifier, ...) does not take; a sweep
# skips the cells whose only problem this is.
UNKNOWN_OPTION = "not a known option"
# Arguments the runner supplies itself (engines, verifiers), never from config.
INJECTED = frozenset({"self", "verifier", "backend", "llm", "prm", "model", "seed"})


class ConfigError(ValueError):
    """A bad config value; its message is one line naming the key."""


def resolve(table: dict[str, str], name: str, key: str) -> type:
    if name not in table:
        raise ConfigError(f"{key}: unknown {name!r}; allowed: {', '.join(table)}")
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)


def check_args(
    target: Callable[..., Any], params: dict[str, Any], key: str, injected: frozenset[str] = INJECTED
) -> dict[str, Any]:
    """Validate ``params`` against the annotations of a class's ``__init__`` or a
    function (or partial); return the coerced values."""
    fn = target.__init__ if isinstance(target, type) else target
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn.func if isinstance(fn, functools.partial) else fn, include_extras=True)
    fields = {
        n: (hints.get(n, Any), ... if p.default is inspect.Parameter.empty else p.default)
        for n, p in sig.parameters.items()
        if n not in injected and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    name = getattr(target, "__name__", None) or getattr(getattr(target, "func", None), "__name__", "target")
    model = create_model(f"{name}Args", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)  # type: ignore[call-overload]
    try:
        return model(**params).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" else ""
        msg = UNKNOWN_OPTION if err["type"] == "extra_forbidden" else err["msg"]
        allowed = f"; allowed: {', '.join(fields)}" if err["type"] == "extra_forbidden" else ""
        raise ConfigError(f"{key}.{loc}: {msg}{got}{allowed}") from None
